"""No litter: after a build, a no-op or a failed build, the output's folder holds the output only."""

from __future__ import annotations

import errno

from tests.helpers import cli, mergefile_for

BODY = """
out/m: linear {
    a weight=0.5
    b weight=0.5
}
"""


def _beside(tmp_path):
    return sorted(p.name for p in (tmp_path / "out").iterdir())


def test_build_and_noop_leave_only_the_output(tiny_models, tmp_path):
    mergefile_for(tmp_path, {"a": tiny_models["a"], "b": tiny_models["b"]}, BODY)
    assert cli(tmp_path, cache=tmp_path / "cache") == 0
    assert _beside(tmp_path) == ["m"]
    assert cli(tmp_path, cache=tmp_path / "cache") == 0
    assert _beside(tmp_path) == ["m"]


def test_failed_build_leaves_nothing_beside_the_output(tiny_models, tmp_path, monkeypatch):
    from mergefile.io import writer

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    mergefile_for(tmp_path, {"a": tiny_models["a"], "b": tiny_models["b"]}, BODY)
    monkeypatch.setattr(writer, "write_safetensors", disk_full)
    assert cli(tmp_path, cache=tmp_path / "cache") == 1  # one line (docs/ci.md), no traceback
    assert _beside(tmp_path) == []
    monkeypatch.undo()
    assert cli(tmp_path, cache=tmp_path / "cache") == 0  # and the rerun builds
    assert _beside(tmp_path) == ["m"]
