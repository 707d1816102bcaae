"""The import contracts of pyproject.toml ([tool.importlinter]): stages import downwards only.

A new import from a lower stage into a higher one (``plan`` importing ``run``, ``methods``
importing ``targets``), at module level or inside a function, fails here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from tests.helpers import REPO


def _lint(config: str) -> subprocess.CompletedProcess:
    code = (
        "import sys; from importlinter.cli import lint_imports; "
        f"sys.exit(lint_imports(config_filename={config!r}, no_cache=True))"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_import_contracts_hold():
    r = _lint(str(REPO / "pyproject.toml"))
    assert r.returncode == 0, r.stdout + r.stderr


def _lint_copy(root) -> subprocess.CompletedProcess:
    code = (
        "import sys; from importlinter.cli import lint_imports; "
        f"sys.exit(lint_imports(config_filename={str(root / 'pyproject.toml')!r}, no_cache=True))"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(root)},
    )


def test_a_new_back_import_breaks_the_contract(tmp_path):
    """The contract is not vacuous: a copy of the package with one function-level import from
    the plan stage into the run stage fails it, naming the import."""
    shutil.copytree(REPO / "mergefile", tmp_path / "mergefile", ignore=shutil.ignore_patterns("__pycache__", "static"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    jobs = tmp_path / "mergefile" / "plan" / "jobs.py"
    jobs.write_text(jobs.read_text() + "\n\ndef _sneaky():\n    from mergefile.run import build  # noqa\n")
    r = _lint_copy(tmp_path)
    assert r.returncode != 0 and "mergefile.plan.jobs -> mergefile.run.build" in r.stdout, r.stdout + r.stderr


def test_no_back_import_is_excused():
    """The layers contract lists no ignored back-import: plug-ins register (mergefile.plugins)."""
    text = (REPO / "pyproject.toml").read_text()
    layers = text.split('name = "stages import downwards only"', 1)[1].split("[[tool.importlinter.contracts]]", 1)[0]
    assert "ignore_imports" not in layers
