"""Every family in families.json: the table matches what transformers saves, and a linear merge
and a two-source frankenmerge of tiny random models load in transformers and run forward."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from mergefile.arch import config_get, families, layer_layout
from tests.arch.conftest import FAMILY_CONFIGS, VOCAB
from tests.helpers import cli, mergefile_for, read_tensors

FAMILIES = sorted(families())


def _names(path) -> list[str]:
    names = []
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            names += list(fh.keys())
    return names


def _config(path) -> dict:
    return json.loads((path / "config.json").read_text())


def test_every_family_has_a_fixture_line():
    assert sorted(FAMILY_CONFIGS) == FAMILIES


def test_the_table_covers_the_issue_list():
    wanted = {
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen3",
        "qwen2_moe",
        "qwen3_moe",
        "gemma",
        "gemma2",
        "gemma3_text",
        "phi3",
        "gpt2",
        "gpt_neox",
        "stablelm",
        "olmo2",
        "granite",
        "cohere",
    }
    assert wanted <= set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_table_describes_the_checkpoint(family, family_models):
    path = family_models(family)["a"]
    fam = families()[family]
    names, config = _names(path), _config(path)
    lay = layer_layout(names, config)
    assert lay.family == family
    assert lay.notes == ()  # every tensor is in the table
    assert lay.num_layers == 2 and lay.layer_key == fam.layer_count_key
    assert lay.embedding == fam.embeddings[0]
    assert set(lay.pre) <= {*fam.embeddings, *fam.pre} and set(lay.post) <= {*fam.post, *fam.heads}
    for i in (0, 1):
        rest = {ln.template.split("{}.", 1)[1] for ln in lay.templates(i)}
        assert set(fam.required_layer_names()) <= rest, (i, set(fam.required_layer_names()) - rest)
    tied = config.get("tie_word_embeddings", fam.tie_default)
    assert any(h in names for h in fam.heads) != tied


def _load_and_run(path) -> None:
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 6, 7, 8]])).logits
    assert logits.shape == (1, 5, VOCAB)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_linear_and_frankenmerge_load_and_run(family, family_models, tmp_path):
    models = family_models(family)
    fam = families()[family]
    mergefile_for(
        tmp_path,
        models,
        """
out/linear: linear { a weight=1 ; b weight=1 }
out/frank: passthrough {
    slice a[1:2]
    slice b[0:2]
}
all: out/linear out/frank
""",
    )
    assert cli(tmp_path, "all", cache=tmp_path / "cache") == 0
    for out in ("out/linear", "out/frank"):
        _load_and_run(tmp_path / out)
    a, b = _config(models["a"]), _config(models["b"])
    drop = lambda c: {k: v for k, v in c.items() if k not in ("dtype", "torch_dtype")}  # noqa: E731
    assert drop(_config(tmp_path / "out/linear")) == drop(a)
    cfg = _config(tmp_path / "out/frank")
    assert config_get(cfg, fam.layer_count_key) == 3
    picks = [(a, 1), (b, 0), (b, 1)]
    for key in fam.per_layer_arrays:
        if key in a:
            assert cfg[key] == [src[key][i] for src, i in picks], key
    for key in fam.layer_index_lists:
        if key in a:
            assert cfg[key] == [k for k, (src, i) in enumerate(picks) if i in src[key]], key
    out, ta = read_tensors(tmp_path / "out/frank"), read_tensors(models["a"])
    layer0 = [n for n in out if n.startswith(f"{fam.layers}.0.")]
    assert layer0
    for n in layer0:  # output layer 0 is a's layer 1, bit for bit
        assert torch.equal(out[n], ta[n.replace(f"{fam.layers}.0.", f"{fam.layers}.1.")]), n
    assert any(h in out for h in fam.heads) == any(h in ta for h in fam.heads)
