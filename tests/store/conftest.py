"""Store-test helpers: tiny safetensors files and a header parser / hasher.

``mergefile.io.header`` and ``mergefile.io.reader`` are written in parallel; when they exist the
tests use them, otherwise these minimal stand-ins with the same shape.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import xxhash


@dataclass(frozen=True)
class FakeTensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def _info_class() -> type:
    try:
        from mergefile.io.header import TensorInfo
        from mergefile.io.reader import digest_tensors  # noqa: F401  (use both or neither)
    except ImportError:
        return FakeTensorInfo
    return TensorInfo


def parse_infos(path: str | Path) -> list:
    """Tensor infos (absolute byte ranges) of a safetensors file."""
    cls = _info_class()
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    header.pop("__metadata__", None)
    return [cls(name, t["dtype"], tuple(t["shape"]), str(path),
                8 + n + t["data_offsets"][0], 8 + n + t["data_offsets"][1])
            for name, t in sorted(header.items())]


def fake_digest_tensors(path: str, infos: Sequence) -> dict[str, str]:
    with open(path, "rb") as fh:
        out = {}
        for i in infos:
            fh.seek(i.begin)
            out[i.name] = xxhash.xxh3_128_hexdigest(fh.read(i.end - i.begin))
        return out


@pytest.fixture
def hasher():
    """mergefile.io.reader.digest_tensors when io is there, else the stand-in."""
    if _info_class() is FakeTensorInfo:
        return fake_digest_tensors
    from mergefile.io.reader import digest_tensors

    return digest_tensors


@pytest.fixture
def infos_of():
    """path -> tensor infos (mergefile.io.header.TensorInfo when io is there)."""
    return parse_infos
