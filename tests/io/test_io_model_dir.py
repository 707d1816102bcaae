"""ModelDir: single-file, sharded and pickled folders, and the errors users will meet."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import save_file

from mergefile.errors import UserError
from mergefile.io import ModelDir, TensorReader, read_header


def test_single_file(tiny_models):
    model = ModelDir.open(tiny_models["base"])
    assert model.path == os.path.realpath(tiny_models["base"])
    assert model.config["model_type"] == "llama"
    assert model.files == (os.path.join(model.path, "model.safetensors"),)
    assert model.tensors == read_header(model.files[0])[0]
    assert model.tensors["model.embed_tokens.weight"].shape == (128, 32)
    assert "model.layers.3.mlp.down_proj.weight" in model.tensors


@pytest.fixture(scope="module")
def sharded(tiny_models, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("sharded")
    AutoModelForCausalLM.from_pretrained(tiny_models["base"]).save_pretrained(out, max_shard_size="40KB")
    return out


def test_sharded_equals_single(tiny_models, sharded):
    single = ModelDir.open(tiny_models["base"])
    model = ModelDir.open(sharded)
    assert len(model.files) > 1
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert set(model.tensors) == set(index["weight_map"]) == set(single.tensors)
    reader = TensorReader()
    for name, info in model.tensors.items():
        assert os.path.basename(info.file) == index["weight_map"][name]
        assert torch.equal(reader.get(info), reader.get(single.tensors[name]))


def test_sharded_without_index_and_index_errors(sharded, tmp_path):
    copy = tmp_path / "noindex"
    shutil.copytree(sharded, copy)
    (copy / "model.safetensors.index.json").unlink()
    assert set(ModelDir.open(copy).tensors) == set(ModelDir.open(sharded).tensors)

    broken = tmp_path / "broken"
    shutil.copytree(sharded, broken)
    first = sorted(broken.glob("model-*.safetensors"))[0]
    first.unlink()
    with pytest.raises(UserError, match=first.name):
        ModelDir.open(broken)
    (broken / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(UserError, match="not a valid weight index"):
        ModelDir.open(broken)

    mixed = tmp_path / "mixed"
    shutil.copytree(sharded, mixed)
    index = json.loads((mixed / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    wrong = next(f for f in files if f != index["weight_map"]["lm_head.weight"])
    index["weight_map"]["lm_head.weight"] = wrong
    (mixed / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="'lm_head.weight' is in"):
        ModelDir.open(mixed)
    (mixed / "model.safetensors.index.json").write_text('{"weight_map": []}')
    with pytest.raises(UserError, match="not a valid weight index"):
        ModelDir.open(mixed)


def test_missing_and_empty(tmp_path):
    with pytest.raises(UserError, match="does not exist") as err:
        ModelDir.open(tmp_path / "nope")
    assert "nope" in str(err.value)
    with pytest.raises(UserError, match="no weights"):
        ModelDir.open(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        ModelDir.open(tmp_path / "f")


def test_bad_config(tmp_path):
    save_file({"a": torch.zeros(1)}, tmp_path / "model.safetensors")
    assert ModelDir.open(tmp_path).config == {}
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(UserError, match="config.json"):
        ModelDir.open(tmp_path)


def test_duplicate_tensor_name(tmp_path):
    save_file({"a": torch.zeros(1), "b": torch.zeros(1)}, tmp_path / "one.safetensors")
    save_file({"a": torch.ones(1)}, tmp_path / "two.safetensors")
    with pytest.raises(UserError, match="'a' is in two weight files"):
        ModelDir.open(tmp_path)


def test_model_safetensors_wins_over_strays(tmp_path):
    save_file({"a": torch.zeros(1)}, tmp_path / "model.safetensors")
    save_file({"a": torch.ones(1)}, tmp_path / "adapter_model.safetensors")
    assert list(ModelDir.open(tmp_path).tensors) == ["a"]


@pytest.fixture
def pickled(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    state = {
        "embed.weight": torch.randn(8, 4, generator=g),
        "proj.weight": torch.randn(4, 4, generator=g).to(torch.bfloat16),
        "scale": torch.tensor(2.0),
    }
    state["tied.weight"] = state["embed.weight"]  # shared storage, as tied embeddings are
    state["t.weight"] = state["embed.weight"].T  # a non-contiguous view
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "config.json").write_text('{"model_type": "toy"}')
    return folder, state


def test_pickle_refused_without_opt_in(pickled):
    folder, _ = pickled
    with pytest.raises(UserError, match="only pickled weights") as err:
        ModelDir.open(folder)
    assert "--allow-pickle" in str(err.value) and "run arbitrary code" in str(err.value)


def test_pickle_converted_once(pickled, tmp_path):
    folder, state = pickled
    cache = tmp_path / "converted"
    model = ModelDir.open(folder, allow_pickle=True, convert_dir=cache)
    assert model.path == os.path.realpath(folder)
    assert model.config == {"model_type": "toy"}
    assert set(model.tensors) == set(state)
    reader = TensorReader()
    for name, t in state.items():
        assert torch.equal(reader.get(model.tensors[name]), t)
    (conversion,) = [p for p in cache.iterdir()]
    assert not conversion.name.startswith(".")  # no leftover temp folders
    mtime = os.stat(model.files[0]).st_mtime_ns

    again = ModelDir.open(folder, allow_pickle=True, convert_dir=cache)
    assert again.files == model.files and again.tensors == model.tensors
    assert os.stat(model.files[0]).st_mtime_ns == mtime  # reused, not rewritten

    os.unlink(model.files[0])  # a damaged conversion is redone
    assert ModelDir.open(folder, allow_pickle=True, convert_dir=cache).tensors == model.tensors

    torch.save({"other": torch.zeros(2)}, folder / "pytorch_model.bin")  # changed input
    changed = ModelDir.open(folder, allow_pickle=True, convert_dir=cache)
    assert list(changed.tensors) == ["other"]
    assert len(list(cache.iterdir())) == 2


def test_pickle_with_code_is_refused(tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    torch.save({"w": torch.zeros(1), "opt": {"lr": object}}, folder / "pytorch_model.bin")
    with pytest.raises(UserError, match="weights-only"):
        ModelDir.open(folder, allow_pickle=True, convert_dir=tmp_path / "c")
    assert not any((tmp_path / "c").iterdir())  # the failed conversion left nothing
