"""write_safetensors: streaming, atomic, and byte-identical to safetensors.torch.save_file.

save_file sorts tensors (by dtype alignment, largest first, then by name) while
write_safetensors keeps the caller's order; so the comparison feeds our writer the order
save_file chose, read back from its header.
"""

from __future__ import annotations

import json
import weakref

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mergefile.io import DTYPE_CODES, read_header, tensor_bytes, write_index, write_safetensors


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "model.layers.1.w": torch.randn(7, 3, generator=g),
        "model.layers.0.w": torch.randn(5, generator=g).to(torch.bfloat16),
        "half": torch.randn(3, 3, generator=g).half(),
        "fp8": torch.randn(9, generator=g).to(torch.float8_e4m3fn),
        "ids": torch.arange(5, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "byte": torch.arange(3, dtype=torch.int8),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "é unicode": torch.ones(2, dtype=torch.float64),
    }


def _entries(tensors, order):
    return [
        (n, DTYPE_CODES[tensors[n].dtype], tuple(tensors[n].shape), (lambda t=tensors[n]: tensor_bytes(t)))
        for n in order
    ]


@pytest.mark.parametrize("metadata", [None, {}, {"format": "pt"}])
def test_byte_identical_to_save_file(tmp_path, metadata):
    tensors = _tensors()
    ref = tmp_path / "ref.safetensors"
    save_file(tensors, ref, metadata=metadata)
    infos, _ = read_header(ref)
    order = sorted(infos, key=lambda n: infos[n].begin)  # save_file's own order
    ours = tmp_path / "ours.safetensors"
    size = write_safetensors(ours, _entries(tensors, order), metadata)
    assert ours.read_bytes() == ref.read_bytes()
    assert size == ref.stat().st_size


def test_round_trip_keeps_caller_order(tmp_path):
    tensors = _tensors()
    order = list(tensors)  # not save_file's order
    path = tmp_path / "w.safetensors"
    write_safetensors(path, _entries(tensors, order), {"b": "2", "a": "1"})
    infos, metadata = read_header(path)
    assert list(infos) == order
    assert sorted(infos, key=lambda n: infos[n].begin) == order
    assert list(metadata) == ["a", "b"]  # sorted, for reproducible files
    with safe_open(path, "pt") as f:
        assert f.metadata() == {"a": "1", "b": "2"}
    loaded = load_file(path)
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and loaded[name].shape == t.shape
        assert loaded[name].reshape(-1).view(torch.uint8).tolist() == t.reshape(-1).view(torch.uint8).tolist()
    assert not (tmp_path / "w.safetensors.tmp").exists()


def test_streams_one_fetch_at_a_time_in_order(tmp_path):
    calls: list[str] = []
    alive: list[int] = []
    refs: list[weakref.ref] = []
    path = tmp_path / "s.safetensors"

    def fetch(name: str, n: int):
        def f():
            calls.append(name)
            alive.append(sum(r() is not None for r in refs))
            t = torch.full((n,), float(n))
            refs.append(weakref.ref(t))
            return tensor_bytes(t)

        return f

    entries = [(f"t{i}", "F32", (n,), fetch(f"t{i}", n)) for i, n in enumerate([4, 1, 3, 2])]
    write_safetensors(path, entries)
    assert calls == ["t0", "t1", "t2", "t3"]  # in order, once each
    assert alive == [0, 0, 0, 0]  # each tensor was released before the next was fetched
    assert torch.equal(load_file(path)["t2"], torch.full((3,), 3.0))


def test_wrong_fetch_size_leaves_nothing(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"old")
    entries = [("a", "F32", (2,), lambda: b"\0" * 4)]
    with pytest.raises(ValueError, match="should be 8 bytes"):
        write_safetensors(path, entries)
    assert path.read_bytes() == b"old"  # the old file is untouched
    assert not (tmp_path / "bad.safetensors.tmp").exists()


def test_bad_entries(tmp_path):
    with pytest.raises(ValueError, match="twice"):
        write_safetensors(tmp_path / "x", [("a", "F32", (1,), bytes), ("a", "F32", (1,), bytes)])
    with pytest.raises(ValueError, match="dtype code"):
        write_safetensors(tmp_path / "x", [("a", "float32", (1,), bytes)])


def test_tensor_bytes():
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    mv = tensor_bytes(t)
    assert mv.nbytes == 48 and bytes(mv) == t.numpy().tobytes()
    t[0, 0] = 100.0  # zero-copy: the view sees the tensor's memory
    assert bytes(mv[:4]) == torch.tensor(100.0).numpy().tobytes()
    assert bytes(tensor_bytes(t.T)) == t.T.contiguous().numpy().tobytes()
    bf = torch.tensor([1.0, -2.0], dtype=torch.bfloat16)
    assert bytes(tensor_bytes(bf)) == bytes(bf.view(torch.int16).numpy().tobytes())
    assert bytes(tensor_bytes(torch.tensor(1.5))) == torch.tensor([1.5]).numpy().tobytes()
    assert tensor_bytes(torch.zeros(0, 5)).nbytes == 0
    assert tensor_bytes(torch.ones(2, requires_grad=True)).nbytes == 8


def test_write_index(tmp_path):
    shards = {"b": "model-00002-of-00002.safetensors", "a": "model-00001-of-00002.safetensors"}
    write_index(tmp_path, shards, 123, {"mergebuild_version": "0.1.0"})
    text = (tmp_path / "model.safetensors.index.json").read_text()
    doc = json.loads(text)
    assert doc["metadata"] == {"total_size": 123, "mergebuild_version": "0.1.0"}
    assert list(doc["weight_map"]) == ["a", "b"]
    assert text.endswith("}\n")
