"""config.json rewriting and copying the tokenizer/generation files of a model folder."""

from __future__ import annotations

import json

import pytest
import torch

from mergefile.errors import UserError
from mergefile.io import TOKENIZER_FILES, copy_aux_files, write_config


def test_write_config_sets_keys(tmp_path):
    config = {
        "model_type": "llava",
        "torch_dtype": "float32",
        "text_config": {"num_hidden_layers": 32, "vocab_size": 100},
        "vocab_size": 100,
    }
    write_config(
        config,
        tmp_path / "out",
        layer_key="text_config.num_hidden_layers",
        num_layers=40,
        dtype=torch.bfloat16,
        vocab_size=128,
    )
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["text_config"]["num_hidden_layers"] == 40
    assert written["torch_dtype"] == "bfloat16" and "dtype" not in written
    assert written["vocab_size"] == 128 and written["text_config"]["vocab_size"] == 128
    assert config["text_config"]["num_hidden_layers"] == 32  # the input is not modified


def test_write_config_plain_and_deterministic(tmp_path):
    config = {"vocab_size": 10, "num_hidden_layers": 2, "architectures": ["Llama"], "dtype": "float32"}
    write_config(config, tmp_path / "a", layer_key="num_hidden_layers", num_layers=3, dtype=torch.float16)
    write_config(
        dict(reversed(list(config.items()))),
        tmp_path / "b",
        layer_key="num_hidden_layers",
        num_layers=3,
        dtype=torch.float16,
    )
    a = (tmp_path / "a" / "config.json").read_bytes()
    assert a == (tmp_path / "b" / "config.json").read_bytes()
    assert a.endswith(b"}\n")
    doc = json.loads(a)
    assert doc["num_hidden_layers"] == 3 and doc["dtype"] == "float16" and doc["vocab_size"] == 10
    assert list(doc) == sorted(doc)  # as transformers writes it


def test_write_config_defaults(tmp_path):
    write_config({}, tmp_path, dtype=torch.bfloat16, vocab_size=5)
    assert json.loads((tmp_path / "config.json").read_text()) == {"dtype": "bfloat16", "vocab_size": 5}
    with pytest.raises(KeyError, match="text_config"):
        write_config({}, tmp_path, layer_key="text_config.num_hidden_layers", num_layers=2)


def test_copy_aux_files(tmp_path, tiny_models):
    out = tmp_path / "out"
    copied = copy_aux_files(tiny_models["base"], out)
    assert "tokenizer.json" in copied and "generation_config.json" in copied
    assert "config.json" not in copied and "model.safetensors" not in copied
    for name in copied:
        assert (out / name).read_bytes() == (tiny_models["base"] / name).read_bytes()
    assert set(copied) <= set(TOKENIZER_FILES) | {"generation_config.json"}

    only_gen = copy_aux_files(tiny_models["base"], tmp_path / "gen", tokenizer=False)
    assert only_gen == ["generation_config.json"]

    src = tmp_path / "src"
    (src / "additional_chat_templates").mkdir(parents=True)
    (src / "additional_chat_templates" / "tool.jinja").write_text("{{ x }}")
    assert copy_aux_files(src, out) == ["additional_chat_templates"]
    assert (out / "additional_chat_templates" / "tool.jinja").read_text() == "{{ x }}"

    with pytest.raises(UserError, match="does not exist"):
        copy_aux_files(tmp_path / "missing", out)
