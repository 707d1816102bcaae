"""A library's exception while merging a tensor reaches the user as one paragraph naming the
target, the tensor, the method and the cause (exit 1), not as a traceback; nothing is published."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergefile.run import build as build_mod
from tests.helpers import cli, mergefile_for


def _failing_compute(*args, **kwargs):
    raise RuntimeError("The size of tensor a (16) must match the size of tensor b (8)\nmore lines")


@pytest.fixture
def failing(monkeypatch):
    monkeypatch.setattr(build_mod, "compute_any", _failing_compute)


def test_a_library_error_names_the_tensor_and_exits_1(failing, tiny_models, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.delenv("MERGEBUILD_DEBUG", raising=False)
    mergefile_for(tmp_path, tiny_models, "out/m: linear { base weight=1 ; a weight=2 }")
    assert cli(tmp_path, "out/m", cache=tmp_path / "cache") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("mergebuild: error: out/m: merging ")
    assert "(linear) failed: RuntimeError: The size of tensor a (16)" in line and "more lines" not in err
    assert "MERGEBUILD_DEBUG=1" in line
    assert not (tmp_path / "out" / "m").exists()  # nothing half-written


def test_debug_prints_the_traceback(failing, tiny_models, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("MERGEBUILD_DEBUG", "1")
    mergefile_for(tmp_path, tiny_models, "out/m: linear { base weight=1 ; a weight=2 }")
    assert cli(tmp_path, "out/m", cache=tmp_path / "cache") == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "_failing_compute" in err
