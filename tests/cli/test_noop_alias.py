"""Aliases: a repeated, up-to-date command answered before its command line is parsed
(``mergefile/cli/noop.py``, asking ``store/stamp.py``). Every way the answer could differ must
be a miss."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from mergefile.cli import noop
from mergefile.store import stamp
from tests.alias_support import project, run, settle  # noqa: F401 (a fixture)
from tests.helpers import mergefile_for


def last_summary(cache: Path) -> dict:
    logs = sorted((cache / "logs").glob("*.jsonl"))
    return [json.loads(line) for line in logs[-1].read_text().splitlines()][-1]


def test_a_repeated_command_is_answered_by_its_alias(project, capsys) -> None:
    work, argv = project
    capsys.readouterr()
    assert noop.answer_alias(argv) == 0
    assert capsys.readouterr().out == "out/m is up to date\n"
    summary = last_summary(work / "cache")  # --cache-dir is taken after -C
    assert summary["alias"] and summary["stamp"] and summary["computed"] == 0


def test_the_alias_answer_imports_no_parser(project) -> None:
    _, argv = project
    code = (
        "import sys\n"
        "from mergefile.cli.noop import answer_alias\n"
        f"assert answer_alias({argv!r}) == 0\n"
        "heavy = {'argparse', 'mergefile.cli.main', 'torch', 'lark', 'pathlib', 'typing'}\n"
        "assert not heavy & set(sys.modules), heavy & set(sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=os.getcwd())
    assert r.returncode == 0, r.stderr
    assert r.stdout == "out/m is up to date\n"


def test_another_command_line_or_environment_misses(project, monkeypatch) -> None:
    _, argv = project
    assert noop.answer_alias(argv + ["-j", "2"]) is None  # its own alias comes with its own run
    assert noop.answer_alias(argv + ["-n"]) is None
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # model resolution may differ
    assert noop.answer_alias(argv) is None
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert noop.answer_alias(argv) == 0
    monkeypatch.chdir("w")
    assert noop.answer_alias(argv) is None  # the same words elsewhere mean something else


def test_an_edit_misses_and_is_built(project) -> None:
    work, argv = project
    mf = work / "Mergefile"
    mf.write_text(mf.read_text().replace("a weight=0.5", "a weight=0.7"))
    assert noop.answer_alias(argv) is None
    assert run(argv + ["-q"]) == 1  # stale


def test_a_moved_symlink_misses(tmp_path: Path, tiny_models: dict[str, Path], monkeypatch) -> None:
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        mergefile_for(
            tmp_path / name,
            {"base": tiny_models["base"], "a": tiny_models["a"]},
            f"out/m: linear {{ base weight={0.5 if name == 'one' else 0.2}\n a weight=0.5 }}",
        )
    os.symlink(tmp_path / "one", tmp_path / "here")
    settle()
    monkeypatch.chdir(tmp_path)
    argv = ["-C", "here"]
    assert run(argv) == 0
    assert noop.answer_alias(argv) == 0
    os.unlink(tmp_path / "here")
    os.symlink(tmp_path / "two", tmp_path / "here")  # same words, another project
    assert noop.answer_alias(argv) is None
    assert run(argv + ["-q"]) == 1


def test_question_mode_prints_nothing_and_dry_runs_get_no_alias(project, capsys) -> None:
    _, argv = project
    assert run(argv + ["-q"]) == 0  # answered by the stamp; aliased too
    capsys.readouterr()
    assert noop.answer_alias(argv + ["-q"]) == 0
    assert capsys.readouterr().out == ""
    assert run(argv + ["-n"]) == 0
    assert noop.answer_alias(argv + ["-n"]) is None


def test_aliases_are_pruned(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(stamp, "ALIAS_KEEP", 3)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for i in range(5):
        stamp.record_alias(str(tmp_path), [f"t{i}"], {"cache": "x"}, [], False)
        time.sleep(0.01)
    kept = sorted(p.name for p in (tmp_path / "mergebuild" / "noop").iterdir())
    assert len(kept) == 3
    shutil.rmtree(tmp_path / "mergebuild")
    assert noop.answer_alias(["t4"]) is None  # deleting aliases is always safe
