"""The mergekit YAML corpus (tests/syntax/yaml_corpus/): every key and level of the schema.

For each config: ``mergebuild import`` gives a Mergefile whose build is bit-identical to the
YAML's own build (``--config``); export -> import gives the same Mergefile AST back; the
imported text is already formatted. The first line of each config says what it covers and
what to expect: ``build``, ``plan-error <message>`` (imported faithfully, refused clearly by the
planner) or ``ast`` (hub models: conversion only, no build offline). One cache serves the whole
corpus, so the second build of each pair reads the cache.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from mergefile.cli.main import main
from mergefile.syntax import parse_mergefile, parse_text, yaml_text_to_targets
from mergefile.syntax.convert import yaml_to_mergefile
from mergefile.syntax.layout import format_mergefile
from mergefile.syntax.render_mergefile import render_mergefile
from mergefile.syntax.render_yaml import render_yaml
from tests.helpers import assert_same_tensors, cli, read_tensors

CORPUS = Path(__file__).parent / "yaml_corpus"
FILES = sorted(CORPUS.glob("*.yml"))
_EXPECT = re.compile(r"\|\s*expect:\s*(build|plan-error|ast)\s*(.*)$")


def expectation(path: Path) -> tuple[str, str]:
    first = path.read_text().splitlines()[0]
    m = _EXPECT.search(first)
    assert first.startswith("# covers:") and m, f"{path.name}: first line must be '# covers: ... | expect: ...'"
    return m.group(1), m.group(2).strip()


def write_lora(folder: Path, base: Path, rank: int = 2) -> Path:
    """A small PEFT LoRA adapter (q_proj, v_proj of every layer) for a tiny Llama."""
    import torch
    from safetensors.torch import save_file

    cfg = json.loads((base / "config.json").read_text())
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    outs = {"q_proj": cfg["num_attention_heads"] * hd, "v_proj": cfg["num_key_value_heads"] * hd}
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for i in range(cfg["num_hidden_layers"]):
        for mod, out in outs.items():
            prefix = f"base_model.model.model.layers.{i}.self_attn.{mod}"
            tensors[prefix + ".lora_A.weight"] = torch.randn(rank, cfg["hidden_size"], generator=g) * 0.1
            tensors[prefix + ".lora_B.weight"] = torch.randn(out, rank, generator=g) * 0.1
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": sorted(outs),
        "task_type": "CAUSAL_LM",
        "bias": "none",
        "fan_in_fan_out": False,
        "lora_dropout": 0.0,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def multi_module_models(models: Path) -> None:
    """models/vlm-{base,a,b} (tiny Llavas), models/vlm-custom (vlm-b under an unknown class name:
    needs override_architecture) and models/t5-{base,a,b}."""
    from tests.modular_models import make_family, make_llava, make_t5

    for prefix, make in (("vlm", make_llava), ("t5", make_t5)):
        for name, path in make_family(models.parent / f"_{prefix}", make).items():
            (models / f"{prefix}-{name}").symlink_to(path, target_is_directory=True)
    custom = models / "vlm-custom"
    shutil.copytree(models / "vlm-b", custom)
    config = json.loads((custom / "config.json").read_text())
    config.update(architectures=["CustomLlavaForConditionalGeneration"], model_type="custom_llava")
    (custom / "config.json").write_text(json.dumps(config, indent=2))


@pytest.fixture(scope="module")
def corpus_root(tiny_models, tmp_path_factory) -> Path:
    """models/{base,a,b,c} (links to the session's tiny models), models/lora-a, an adapter, and
    the multi-module models of :func:`multi_module_models`."""
    root = tmp_path_factory.mktemp("corpus")
    for name, path in tiny_models.items():
        (root / "models" / name).parent.mkdir(exist_ok=True)
        (root / "models" / name).symlink_to(path, target_is_directory=True)
    write_lora(root / "models" / "lora-a", Path(tiny_models["a"]))
    multi_module_models(root / "models")
    return root


def test_corpus_is_large_and_covers_the_schema():
    assert len(FILES) >= 30
    text = "\n".join(p.read_text() for p in FILES)
    keys = [
        "merge_method",
        "models",
        "slices",
        "modules",
        "base_model",
        "parameters",
        "dtype",
        "out_dtype",
        "tokenizer_source",
        "tokenizer",
        "chat_template",
        "name",
        "seed",
        "layer_range",
        "sources",
        "residual_weight",
        "filter",
        "value",
        "pad_to_multiple_of",
        "tokens",
        "force",
        "kind",
        "model_token",
        "token_id",
        "+",
        "@",
    ]
    for key in keys:
        assert key in text, f"no corpus config uses {key!r}"


def _round_trip(work: Path, target: str) -> None:
    """Export the imported Mergefile and import the YAML again: the same AST."""
    mf = parse_mergefile(work / "Mergefile")
    text = render_yaml(mf, target, str(work))
    targets = yaml_text_to_targets(text, str(work / "exported.yml"), target)
    again = yaml_to_mergefile(targets, str(work / "Mergefile"))
    assert parse_text(render_mergefile(again), str(work / "Mergefile")).statements == mf.statements


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_corpus_config(path: Path, corpus_root: Path, capsys):
    kind, detail = expectation(path)
    work = corpus_root / path.stem
    work.mkdir()
    (work / "models").symlink_to(corpus_root / "models", target_is_directory=True)
    shutil.copy(path, work / "merge.yml")
    yaml_target, mf_target = f"out/{path.stem}", f"out/{path.stem}-mf"
    assert main(["import", "merge.yml", "--target", mf_target, "-C", str(work), "-o", "Mergefile"]) == 0
    imported = (work / "Mergefile").read_text()
    assert format_mergefile(imported) == imported
    _round_trip(work, mf_target)
    if kind == "ast":
        return
    cache = corpus_root / "cache"
    capsys.readouterr()
    if kind == "plan-error":
        for args in (("--config", "merge.yml", yaml_target), (mf_target,)):
            assert cli(work, "-n", *args, cache=cache) == 2
            assert detail in capsys.readouterr().err
        return
    assert cli(work, "--config", "merge.yml", yaml_target, cache=cache) == 0, capsys.readouterr().err
    assert cli(work, mf_target, cache=cache) == 0, capsys.readouterr().err
    assert_same_tensors(read_tensors(work / yaml_target), read_tensors(work / mf_target))
