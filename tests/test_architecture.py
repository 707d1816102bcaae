"""The import contracts of pyproject.toml ([tool.importlinter]): stages import downwards only.

A new import from a lower stage into a higher one (``plan`` importing ``run``, ``methods``
importing ``targets``), at module level or inside a function, fails here.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import REPO


def _lint(config: str) -> subprocess.CompletedProcess:
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={config!r}, no_cache=True))")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_import_contracts_hold():
    r = _lint(str(REPO / "pyproject.toml"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_new_back_import_breaks_the_contract(tmp_path):
    """The contract is not vacuous: dropping one ignored back-import makes it fail."""
    text = (REPO / "pyproject.toml").read_text()
    entry = '    "mergefile.plan.modules -> mergefile.run.publish",\n'
    assert entry in text
    config = tmp_path / "pyproject.toml"
    config.write_text(text.replace(entry, ""))
    r = _lint(str(config))
    assert r.returncode != 0 and "mergefile.plan.modules -> mergefile.run.publish" in r.stdout, r.stdout + r.stderr
