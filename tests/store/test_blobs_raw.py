"""BlobStore.get_raw: a blob's bytes without torch, the same bytes get() views."""

from __future__ import annotations

import torch

from mergefile.store.blobs import BlobStore


def test_get_raw_is_the_blobs_bytes(tmp_path) -> None:
    store = BlobStore(tmp_path / "c", 1 << 30)
    big = torch.arange(1 << 16, dtype=torch.float32).to(torch.bfloat16).reshape(256, 256)
    small = torch.tensor([1.5, -2.0], dtype=torch.float16)
    empty = torch.empty(0, 3, dtype=torch.float32)
    for key, t in (("k_big", big), ("k_small", small), ("k_empty", empty)):
        store.put(key, t)
        raw = store.get_raw(key, verify=True)
        assert raw is not None and raw.shape == tuple(t.shape)
        assert raw.code == {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}[t.dtype]
        assert bytes(raw.data) == t.contiguous().view(torch.uint8).numpy().tobytes()
        assert torch.equal(store.get(key), t)
    assert store.get_raw("absent") is None


def test_get_raw_drops_a_corrupt_blob(tmp_path) -> None:
    store = BlobStore(tmp_path / "c", 1 << 30)
    store.put("k", torch.ones(1 << 15, dtype=torch.float32))
    path = store.path_of("k")
    with open(path, "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x00\x80\x7f")
    assert store.get_raw("k", verify=True) is None
    assert "k" not in store


def test_put_raw_stores_what_put_stores(tmp_path) -> None:
    """A tensor given as bytes (the torch-free merge path) is the same blob as the tensor."""
    import numpy as np

    from mergefile.io.writer import RawTensor

    store = BlobStore(tmp_path / "c", 1 << 30)
    t = torch.randn(300, 7).to(torch.bfloat16)
    bits = t.view(torch.int16).numpy().view(np.uint16).reshape(-1).copy()
    assert store.put_raw("raw", RawTensor("BF16", (300, 7), memoryview(bits).cast("B"))) > 0
    assert store.put("torch", t) > 0
    assert torch.equal(store.get("raw", verify=True).view(torch.int16), t.view(torch.int16))
    assert bytes(store.get_raw("raw").data) == bytes(store.get_raw("torch").data)
    assert store.put_raw("raw", RawTensor("BF16", (300, 7), memoryview(bits).cast("B"))) == 0  # already there
