"""The tiny demo models: real transformers models, deterministic to the byte."""

from __future__ import annotations

import os

import pytest
import torch

from mergefile.demo import main, make_demo, make_llama
from mergefile.io import ModelDir, TensorReader


def _files(folder) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


@pytest.mark.parametrize("family", ["tiny_models", "tiny_models_bf16"])
def test_loads_and_generates(request, family):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    models = request.getfixturevalue(family)
    dtype = torch.float32 if family == "tiny_models" else torch.bfloat16
    for path in models.values():
        model = AutoModelForCausalLM.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
        assert model.dtype == dtype
        assert len(tok) == model.config.vocab_size == 128
        inputs = tok("solve the math problem", return_tensors="pt")
        assert inputs.input_ids[0, 0] == tok.bos_token_id == 1
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        assert out.shape[1] == inputs.input_ids.shape[1] + 4 or int(out[0, -1]) == tok.eos_token_id
        assert tok.decode(inputs.input_ids[0], skip_special_tokens=True) == "solve the math problem"


def test_finetunes_are_close_to_base(tiny_models):
    base = ModelDir.open(tiny_models["base"])
    reader = TensorReader()
    for name in ("a", "b", "c"):
        tuned = ModelDir.open(tiny_models[name])
        assert list(tuned.tensors) == list(base.tensors)
        assert tuned.config == base.config
        for tname, info in base.tensors.items():
            t = reader.get(tuned.tensors[tname]) - reader.get(info)
            assert 0.01 < float(t.std()) < 0.03  # delta_scale * N(0, 1)
    a, b = (reader.get(ModelDir.open(tiny_models[n]).tensors["lm_head.weight"]) for n in ("a", "b"))
    assert not torch.equal(a, b)


def test_deterministic(tmp_path, tiny_models):
    one = make_llama(tmp_path / "one", seed=0)
    torch.randn(100)  # the global RNG state must not matter
    two = make_llama(tmp_path / "two", seed=0)
    assert _files(one) == _files(two) == _files(tiny_models["base"])
    ft1 = make_llama(tmp_path / "ft1", seed=1, base=one)
    ft2 = make_llama(tmp_path / "ft2", seed=1, base=two)
    assert _files(ft1) == _files(ft2) == _files(tiny_models["a"])
    other = make_llama(tmp_path / "other", seed=5)
    assert _files(other)["model.safetensors"] != _files(one)["model.safetensors"]


def test_tied_embeddings(tmp_path):
    path = make_llama(tmp_path / "tied", seed=0, tie_embeddings=True, layers=1)
    model = ModelDir.open(path)
    assert "lm_head.weight" not in model.tensors and model.config["tie_word_embeddings"] is True


def test_make_demo_idempotent(tmp_path, capsys):
    assert main([str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("base", "math", "code", "chat"))
    paths = make_demo(tmp_path / "demo")
    assert sorted(paths) == ["base", "chat", "code", "math"]
    stamps = {n: os.stat(p / "model.safetensors").st_mtime_ns for n, p in paths.items()}
    base = ModelDir.open(paths["base"])
    assert base.config["hidden_size"] == 64 and base.config["vocab_size"] == 256
    assert all((p / "model.safetensors").stat().st_size < 4_000_000 for p in paths.values())
    make_demo(tmp_path / "demo")
    assert stamps == {n: os.stat(p / "model.safetensors").st_mtime_ns for n, p in paths.items()}
    assert not [p for p in (tmp_path / "demo").iterdir() if p.name.startswith(".")]
