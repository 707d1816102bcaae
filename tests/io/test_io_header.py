"""read_header against safetensors itself, on real files with every dtype."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mergefile.errors import UserError
from mergefile.io import DTYPE_CODES, TORCH_DTYPES, dtype_name, parse_dtype, read_header


def _all_dtypes() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for code, dt in TORCH_DTYPES.items():
        base = torch.randn(3, 5, generator=g) * 10
        if dt == torch.bool:
            t = base > 0
        elif dt in (torch.uint8, torch.uint16, torch.uint32, torch.uint64):
            t = base.abs().to(torch.int64).to(dt)
        else:
            t = base.to(dt)
        out[f"t.{code.lower()}"] = t
    out["scalar"] = torch.tensor(3.5, dtype=torch.bfloat16)
    out["empty"] = torch.zeros(0, 4)
    return out


@pytest.fixture
def every_dtype_file(tmp_path):
    path = tmp_path / "all.safetensors"
    tensors = _all_dtypes()
    save_file(tensors, path, metadata={"format": "pt", "note": "x"})
    return path, tensors


def test_header_matches_safe_open(every_dtype_file):
    path, tensors = every_dtype_file
    infos, metadata = read_header(path)
    assert metadata == {"format": "pt", "note": "x"}
    raw = path.read_bytes()
    with safe_open(path, "pt") as f:
        assert set(infos) == set(f.keys())
        for name, info in infos.items():
            t = f.get_tensor(name)
            assert info.name == name
            assert info.file == os.path.realpath(path)
            assert info.shape == tuple(t.shape)
            assert info.dtype == DTYPE_CODES[t.dtype]
            assert info.nbytes == t.numel() * t.element_size()
            # the byte range holds exactly the tensor's bytes
            expected = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
            assert raw[info.begin : info.end] == expected
            assert torch.equal(t, tensors[name])
    assert infos["scalar"].shape == ()
    assert infos["empty"].nbytes == 0


def test_header_only_reads_header(tmp_path):
    """A (sparse) 8 GB file is indexed instantly: tensor bytes are never read."""
    path = tmp_path / "big.safetensors"
    n = 2**30
    header = f'{{"big":{{"dtype":"F64","shape":[{n}],"data_offsets":[0,{8 * n}]}}}}'.encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        f.truncate(8 + len(header) + 8 * n)
    infos, metadata = read_header(path)
    assert metadata == {}
    assert infos["big"].shape == (n,) and infos["big"].nbytes == 8 * n
    assert infos["big"].begin == 8 + len(header)


def _file(header: str, data: int = 0) -> bytes:
    raw = header.encode()
    return len(raw).to_bytes(8, "little") + raw + bytes(data)


F32_2 = '"dtype":"F32","shape":[2],"data_offsets":[0,8]'


@pytest.mark.parametrize(
    "blob, why",
    [
        (b"", "8-byte"),
        (b"\x05\x00\x00", "8-byte"),
        ((1000).to_bytes(8, "little") + b"{}", "header length"),
        (_file("nope"), "not valid JSON"),
        (_file("[]"), "not a JSON object"),
        (_file('{"a":{' + F32_2 + "}}", data=4), "ends at byte"),
        (_file('{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', data=8), "needs 12"),
        (_file('{"a":{"dtype":"Q99","shape":[2],"data_offsets":[0,8]}}', data=8), "Q99"),
        (_file('{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}', data=8), "shape"),
        (_file('{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}', data=8), "data_offsets"),
        (_file('{"a":[1]}'), "entry"),
        (_file('{"__metadata__":{"a":1}}'), "__metadata__"),
    ],
)
def test_corrupt_header_is_a_user_error(tmp_path, blob, why):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(blob)
    with pytest.raises(UserError, match=why) as err:
        read_header(path)
    assert "bad.safetensors" in str(err.value)


def test_truncated_real_file(every_dtype_file, tmp_path):
    path, _ = every_dtype_file
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(UserError, match="cut.safetensors"):
        read_header(cut)


def test_missing_file():
    with pytest.raises(UserError, match="does not exist"):
        read_header("/nonexistent/x.safetensors")


@pytest.mark.parametrize(
    "name, dtype",
    [
        ("bfloat16", torch.bfloat16),
        ("bf16", torch.bfloat16),
        ("torch.bfloat16", torch.bfloat16),
        ("BF16", torch.bfloat16),
        ("float16", torch.float16),
        ("fp16", torch.float16),
        ("half", torch.float16),
        ("float32", torch.float32),
        ("fp32", torch.float32),
        ("float", torch.float32),
        ("float64", torch.float64),
        ("int64", torch.int64),
        (" Float32 ", torch.float32),
        ("float8_e4m3fn", torch.float8_e4m3fn),
        ("bool", torch.bool),
    ],
)
def test_parse_dtype(name, dtype):
    assert parse_dtype(name) is dtype


def test_parse_dtype_did_you_mean():
    with pytest.raises(UserError, match="did you mean 'bfloat16'"):
        parse_dtype("bfloat61")
    with pytest.raises(UserError, match="unknown dtype 'xyz'"):
        parse_dtype("xyz")


def test_dtype_name_round_trips():
    assert dtype_name(torch.bfloat16) == "bfloat16"
    assert dtype_name(torch.float32) == "float32"
    for dt in TORCH_DTYPES.values():
        assert parse_dtype(dtype_name(dt)) is dt
