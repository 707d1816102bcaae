"""Store-test helpers: header parsing and hashing come from the real IO layer."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergefile.io.header import read_header


def parse_infos(path: str | Path) -> list:
    """Tensor infos (absolute byte ranges) of a safetensors file, sorted by name."""
    tensors, _ = read_header(path)
    return [tensors[name] for name in sorted(tensors)]


@pytest.fixture
def hasher():
    """The digest function the stat-cache uses by default."""
    from mergefile.io.reader import digest_tensors

    return digest_tensors


@pytest.fixture
def infos_of():
    """path -> tensor infos (mergefile.io.header.TensorInfo)."""
    return parse_infos
