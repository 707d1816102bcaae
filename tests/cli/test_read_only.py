"""Read-only commands create nothing: no ./cache, no folder, no file (issue 18)."""

from __future__ import annotations

import pytest

from tests.helpers import cli, mergefile_for

BODY = """
out/m: linear {
    a weight=0.5
    b weight=0.5
}
"""


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize(
    "args",
    [["graph"], ["status"], ["-n", "out/m"], ["-q", "out/m"], ["log"], ["cache", "stats"], ["cache", "ls"], ["--help"]],
    ids=lambda a: " ".join(a),
)
def test_a_read_only_command_leaves_the_folder_as_it_was(tiny_models, tmp_path, args):
    mergefile_for(tmp_path, {"a": tiny_models["a"], "b": tiny_models["b"]}, BODY)
    before = _tree(tmp_path)
    try:
        cli(tmp_path, *args)  # no --cache-dir: the default ./cache would be created here
    except SystemExit as e:  # --help
        assert e.code == 0
    assert _tree(tmp_path) == before
    assert not (tmp_path / "cache").exists()


def test_a_dry_run_after_a_build_still_reads_the_cache(tiny_models, tmp_path, capsys):
    mergefile_for(tmp_path, {"a": tiny_models["a"], "b": tiny_models["b"]}, BODY)
    assert cli(tmp_path, "out/m") == 0
    assert (tmp_path / "cache").is_dir()
    assert cli(tmp_path, "-q", "out/m") == 0  # up to date: the stat-cache of ./cache answered
