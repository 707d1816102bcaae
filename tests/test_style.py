"""The code passes its linter and is formatted (ruff, configured in pyproject.toml).

Both run over the whole repository (package, tests, bench scripts) as CI would; ruff is pinned
in the dev extra because its formatting moves between versions.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "args", [("check", "--no-cache", "."), ("format", "--check", "--no-cache", ".")], ids=["lint", "format"]
)
def test_ruff(args):
    out = _ruff(*args)
    assert out.returncode == 0, f"ruff {' '.join(args)}:\n{out.stdout}{out.stderr}"


def test_ruff_catches_an_unused_import(tmp_path):
    """The check is live: the same configuration fails on a file with a lint error."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n")
    out = _ruff("check", "--no-cache", "--config", str(ROOT / "pyproject.toml"), str(bad))
    assert out.returncode == 1 and "F401" in out.stdout
