"""TensorReader (zero-copy mmap views) and digest_tensors (one-pass xxh3 over the file)."""

from __future__ import annotations

import threading

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mergefile.io import TensorReader, digest_tensors, read_header


@pytest.fixture
def sample(tmp_path):
    g = torch.Generator().manual_seed(3)
    tensors = {
        "w": torch.randn(16, 8, generator=g),
        "bf": torch.randn(4, 4, generator=g).to(torch.bfloat16),
        "f16": torch.randn(5, generator=g).half(),
        "fp8": torch.randn(6, generator=g).to(torch.float8_e5m2),
        "i64": torch.arange(4),
        "flag": torch.tensor([True, False]),
        "scalar": torch.tensor(7.25),
        "empty": torch.zeros(3, 0),
    }
    path = tmp_path / "m.safetensors"
    save_file(tensors, path)
    return path, tensors


def test_values_equal_safe_open(sample):
    path, tensors = sample
    infos, _ = read_header(path)
    reader = TensorReader()
    with safe_open(path, "pt") as f:
        for name, info in infos.items():
            got, ref = reader.get(info), f.get_tensor(name)
            assert got.dtype == ref.dtype and got.shape == ref.shape
            assert got.reshape(-1).view(torch.uint8).tolist() == ref.reshape(-1).view(torch.uint8).tolist()
    assert reader.tensors_read == len(infos)
    assert reader.bytes_read == sum(i.nbytes for i in infos.values())
    reader.close()


def test_views_are_private_and_outlive_close(sample):
    path, _ = sample
    before = path.read_bytes()
    infos, _ = read_header(path)
    reader = TensorReader()
    w = reader.get(infos["w"])
    w.zero_()  # copy-on-write: the file never changes
    reader.close()
    assert float(w.abs().sum()) == 0.0  # still valid after close
    assert path.read_bytes() == before
    with TensorReader() as again:
        assert float(again.get(infos["w"]).abs().sum()) > 0


def test_counters_start_at_zero_and_threads(sample):
    path, tensors = sample
    infos, _ = read_header(path)
    reader = TensorReader()
    assert reader.bytes_read == 0 and reader.tensors_read == 0
    errors: list[BaseException] = []

    def work():
        try:
            for _ in range(50):
                assert torch.equal(reader.get(infos["w"]), tensors["w"])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert reader.tensors_read == 200
    assert reader.bytes_read == 200 * infos["w"].nbytes
    assert len(reader._maps) == 1  # one mapping per file
    reader.close()


def test_digest_stable_and_sensitive(sample, tmp_path):
    path, _ = sample
    infos, _ = read_header(path)
    first = digest_tensors(str(path), list(infos.values()))
    assert list(first) == list(infos)
    assert all(len(d) == 32 for d in first.values())
    assert digest_tensors(str(path), list(infos.values())) == first
    assert first["empty"] == digest_tensors(str(path), [infos["empty"]])["empty"]
    # flip one byte inside "bf": only its digest changes
    data = bytearray(path.read_bytes())
    data[infos["bf"].begin + 3] ^= 0x01
    flipped = tmp_path / "flipped.safetensors"
    flipped.write_bytes(bytes(data))
    infos2, _ = read_header(flipped)
    second = digest_tensors(str(flipped), list(infos2.values()))
    changed = {n for n in first if first[n] != second[n]}
    assert changed == {"bf"}


def test_digest_rejects_other_files(sample, tmp_path):
    path, tensors = sample
    other = tmp_path / "other.safetensors"
    save_file(tensors, other)
    infos, _ = read_header(other)
    with pytest.raises(ValueError):
        digest_tensors(str(path), list(infos.values()))
    assert digest_tensors(str(path), []) == {}


def test_misaligned_foreign_file(tmp_path):
    """Writers other than safetensors may not pad the header; values must still be right."""
    values = torch.tensor([1.5, -2.0, 3.25])
    header = b'{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}}'  # 55 bytes: data at 63
    path = tmp_path / "odd.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + values.numpy().tobytes())
    infos, _ = read_header(path)
    assert infos["x"].begin % 4 != 0
    assert torch.equal(TensorReader().get(infos["x"]), values)
