"""A built, stamped and aliased project, shared by the alias and the dependency-list tests."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mergefile.cli.main import main
from mergefile.store import stamp
from tests.helpers import mergefile_for


def settle() -> None:
    time.sleep(2 * stamp.RACY_FINE_NS / 1e9)  # files just written are never vouched for


def run(argv: list[str]) -> int:
    """``mergebuild ARGV`` in-process, from (and back to) the current directory (-C moves it)."""
    here = os.getcwd()
    try:
        return main(argv)
    finally:
        os.chdir(here)


@pytest.fixture()
def project(tmp_path: Path, tiny_models: dict[str, Path], monkeypatch) -> tuple[Path, list[str]]:
    work = tmp_path / "w"
    work.mkdir()
    mergefile_for(
        work, {"base": tiny_models["base"], "a": tiny_models["a"]}, "out/m: linear { base weight=0.5\n a weight=0.5 }"
    )
    settle()
    monkeypatch.chdir(tmp_path)
    argv = ["-C", "w", "--cache-dir", "cache"]
    assert run(argv) == 0  # builds, stamps, and aliases this command
    return work, argv
