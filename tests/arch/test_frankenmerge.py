"""Frankenmerge rules: repeated layers, tied heads, refused crimes, bad ranges, missing tensors,
and architectures that are not in the family table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergefile.demo import make_llama
from mergefile.plan.planner import Planner
from mergefile.syntax import parse_mergefile
from tests.helpers import cli, cli_json, mergefile_for, read_tensors


def clone(src: Path, dst: Path, *, config: dict | None = None, drop: tuple[str, ...] = (), rename=None) -> Path:
    """A copy of a single-file model folder with config keys replaced and tensors dropped/renamed."""
    shutil.copytree(src, dst)
    tensors = load_file(str(src / "model.safetensors"))
    tensors = {(rename(k) if rename else k): v for k, v in tensors.items() if k not in drop}
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    for k, v in (config or {}).items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def load(path: Path):
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 5, 6]])).logits).all()
    return model


@pytest.fixture(scope="module")
def tied(tiny_models, tmp_path_factory) -> Path:
    """A Llama shaped like tiny_models but with tied embeddings (no lm_head tensor)."""
    return make_llama(tmp_path_factory.mktemp("tied") / "t", seed=7, tie_embeddings=True)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_repeated_layers_are_written_separately(tiny_models, tmp_path, jobs):
    mergefile_for(tmp_path, tiny_models, "out/f: passthrough {\n slice a[0:2]\n slice a[1:3]\n slice a[1:2]\n}")
    assert cli(tmp_path, "-j", jobs, cache=tmp_path / "cache") == 0
    out, a = read_tensors(tmp_path / "out/f"), read_tensors(tiny_models["a"])
    for k, src in enumerate([0, 1, 1, 2, 1]):
        for n in [n for n in a if n.startswith("model.layers.0.")]:
            assert torch.equal(out[n.replace(".0.", f".{k}.", 1)], a[n.replace(".0.", f".{src}.", 1)])
    assert json.loads((tmp_path / "out/f/config.json").read_text())["num_hidden_layers"] == 5
    assert len(load(tmp_path / "out/f").model.layers) == 5


def test_all_tied_output_stays_tied(tiny_models, tied, tmp_path):
    t2 = clone(tied, tmp_path / "t2")
    mergefile_for(tmp_path, {"t": tied, "t2": t2}, "out/x: linear { t weight=1 ; t2 weight=1 }")
    assert cli(tmp_path, cache=tmp_path / "cache") == 0
    assert "lm_head.weight" not in read_tensors(tmp_path / "out/x")
    assert json.loads((tmp_path / "out/x/config.json").read_text())["tie_word_embeddings"] is True
    load(tmp_path / "out/x")


def test_tied_model_contributes_its_embedding_to_lm_head(tiny_models, tied, tmp_path):
    mergefile_for(tmp_path, {"t": tied, "a": tiny_models["a"]}, "out/x: linear { t weight=1 ; a weight=3 }")
    assert cli(tmp_path, cache=tmp_path / "cache") == 0
    out, t, a = (read_tensors(p) for p in (tmp_path / "out/x", tied, tiny_models["a"]))
    torch.testing.assert_close(out["lm_head.weight"], (t["model.embed_tokens.weight"] + 3 * a["lm_head.weight"]) / 4)
    assert json.loads((tmp_path / "out/x/config.json").read_text())["tie_word_embeddings"] is False
    load(tmp_path / "out/x")


def test_head_comes_from_the_last_slice(tiny_models, tied, tmp_path):
    mergefile_for(tmp_path, {"t": tied, "a": tiny_models["a"]}, "out/f: passthrough {\n slice a[0:2]\n slice t[2:4]\n}")
    assert cli(tmp_path, cache=tmp_path / "cache") == 0
    out, a = read_tensors(tmp_path / "out/f"), read_tensors(tiny_models["a"])
    assert "lm_head.weight" not in out  # the last slice's model is tied, so the output is
    assert torch.equal(out["model.embed_tokens.weight"], a["model.embed_tokens.weight"])  # first slice
    assert json.loads((tmp_path / "out/f/config.json").read_text())["tie_word_embeddings"] is True
    load(tmp_path / "out/f")


def test_mixed_architectures_are_refused_unless_allowed(tiny_models, tmp_path, capsys):
    mistral = clone(
        tiny_models["b"],
        tmp_path / "mistral",
        config={"model_type": "mistral", "architectures": ["MistralForCausalLM"]},
    )
    mergefile_for(tmp_path, {"a": tiny_models["a"], "m": mistral}, "out/x: linear { a weight=1 ; m weight=1 }")
    assert cli(tmp_path, cache=tmp_path / "cache") == 2
    err = capsys.readouterr().err
    assert "mixes architectures" in err and "LlamaForCausalLM" in err and "MistralForCausalLM" in err
    assert "--allow-crimes" in err and "Traceback" not in err
    r = cli_json(tmp_path, "--allow-crimes", cache=tmp_path / "cache", capsys=capsys)
    assert r["exit"] == 0 and r["targets"][0]["built"]


def test_layer_range_beyond_the_model(tiny_models, tmp_path, capsys):
    mergefile_for(tmp_path, tiny_models, "out/f: passthrough {\n slice a[0:2]\n slice b[2:9]\n}")
    assert cli(tmp_path, cache=tmp_path / "cache") == 2
    assert "layer range [2:9] is beyond model 'b', which has 4 layers" in capsys.readouterr().err


def test_tensor_missing_from_one_model(tiny_models, tmp_path, capsys):
    broken = clone(tiny_models["b"], tmp_path / "broken", drop=("model.layers.1.mlp.up_proj.weight",))
    mergefile_for(tmp_path, {"a": tiny_models["a"], "broken": broken}, "out/x: linear { a weight=1 ; broken weight=1 }")
    assert cli(tmp_path, cache=tmp_path / "cache") == 2
    err = capsys.readouterr().err
    assert "tensor 'model.layers.1.mlp.up_proj.weight' is missing from model 'broken'" in err


def _mystery(src: Path, dst: Path, rename=None, **config) -> Path:
    return clone(
        src, dst, config={"model_type": "mystery", "architectures": ["MysteryForCausalLM"], **config}, rename=rename
    )


def test_unknown_architecture_is_inferred_from_names(tiny_models, tmp_path):
    a, b = _mystery(tiny_models["a"], tmp_path / "ma"), _mystery(tiny_models["b"], tmp_path / "mb")
    mergefile_for(tmp_path, {"a": a, "b": b}, "out/f: passthrough {\n slice a[0:3]\n slice b[3:4]\n}")
    assert cli(tmp_path, cache=tmp_path / "cache") == 0
    out = read_tensors(tmp_path / "out/f")
    assert json.loads((tmp_path / "out/f/config.json").read_text())["num_hidden_layers"] == 4
    assert torch.equal(
        out["model.layers.3.self_attn.q_proj.weight"], read_tensors(b)["model.layers.3.self_attn.q_proj.weight"]
    )
    assert torch.equal(out["lm_head.weight"], read_tensors(b)["lm_head.weight"])  # post from the last slice


def test_unknown_architecture_without_layer_key_warns(tiny_models, tmp_path):
    a = _mystery(tiny_models["a"], tmp_path / "ma", num_hidden_layers=None)
    mf = mergefile_for(tmp_path, {"a": a}, "out/f: passthrough {\n slice a[0:3]\n}")
    plan = Planner(parse_mergefile(mf)).plan("out/f")
    assert plan.num_layers == 3 and "num_hidden_layers" not in plan.config
    assert any("no layer-count key" in w and "it still says 4 layers, the output has 3" in w for w in plan.warnings), (
        plan.warnings
    )
    assert cli(tmp_path, cache=tmp_path / "cache") == 0


def test_unknown_layer_count_is_a_clear_error(tiny_models, tmp_path, capsys):
    a = _mystery(
        tiny_models["a"], tmp_path / "ma", num_hidden_layers=None, rename=lambda n: n.replace("layers.", "stack_")
    )
    mergefile_for(tmp_path, {"a": a}, "out/f: passthrough {\n slice a[0:2]\n}")
    assert cli(tmp_path, cache=tmp_path / "cache") == 2
    assert "layer count cannot be inferred" in capsys.readouterr().err
