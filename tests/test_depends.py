"""One up-to-date proof with one declared dependency list (``mergefile/depends.py``, issue 18).

The stamp (``store/stamp.py``), the console script's alias of a repeated command (a second
lookup key for the same stamp) and the build server's fingerprint read the environment lists
and the code fingerprint from one place; nothing else declares its own.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

from mergefile import _tree, depends
from mergefile.cli import noop
from mergefile.server import environment as server_environment
from mergefile.server import fingerprint as server_fingerprint
from mergefile.store import stamp
from tests.alias_support import project, run, settle  # noqa: F401 (a fixture)
from tests.helpers import REPO


def request_of(work: Path) -> dict:
    (path,) = (work / "cache" / "stamps").glob("*.json")
    return json.loads(path.read_text())["request"]


def test_a_variable_of_the_shared_list_misses_stamp_and_alias_and_changes_the_fingerprint(project, monkeypatch):
    work, argv = project
    request = request_of(work)
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    key = server_fingerprint.fingerprint(env)
    assert stamp.check(request["cache"], request) is not None and noop.answer_alias(argv) == 0

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # on both lists (HUB_ENV): resolution and imports
    assert stamp.check(request["cache"], request) is None
    assert noop.answer_alias(argv) is None
    assert server_fingerprint.fingerprint(env | {"HF_HUB_OFFLINE": "1"}) != key
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert noop.answer_alias(argv) == 0


def test_stamp_alias_and_fingerprint_read_the_declared_list_itself(project, monkeypatch):
    """A prefix added to the declaration (and only there) reaches all three."""
    work, argv = project
    request = request_of(work)
    monkeypatch.setenv("MB_DEPENDS_PROBE", "1")
    assert stamp.check(request["cache"], request) is not None and noop.answer_alias(argv) == 0
    env = dict(os.environ)
    key = server_fingerprint.fingerprint(env)

    monkeypatch.setattr(depends, "RESOLUTION_ENV", depends.RESOLUTION_ENV + ("MB_DEPENDS_",))
    assert stamp.check(request["cache"], request) is None
    assert noop.answer_alias(argv) is None
    assert server_fingerprint.fingerprint(env) == key  # a run-time variable: same server
    monkeypatch.setattr(depends, "IMPORT_TIME_ENV", depends.IMPORT_TIME_ENV + ("MB_DEPENDS_",))
    assert server_fingerprint.fingerprint(env) != key


def test_the_alias_is_only_a_key_for_the_stamp(project):
    """An alias names the stamp it meant, under the stamp's version; it holds no request, files
    or environment of its own, so without the stamp it answers nothing."""
    work, argv = project
    data = json.loads(Path(stamp._alias_path(os.getcwd(), argv)).read_text())
    assert set(data) == {"version", "cache", "stamp", "resolve", "question"}
    assert data["version"] == stamp.STAMP_VERSION
    request = request_of(work)
    assert data["stamp"] == stamp.request_id(request) and data["cache"] == request["cache"]
    assert noop.answer_alias(argv) == 0
    stamp.forget(request["cache"], request)
    assert noop.answer_alias(argv) is None


def test_one_code_fingerprint_and_one_environment_declaration():
    assert stamp.code_fingerprint is depends.code_fingerprint is _tree.code_fingerprint
    assert server_fingerprint.code_fingerprint is depends.code_fingerprint
    assert stamp.resolution_environment is depends.resolution_environment
    assert server_fingerprint.import_environment is depends.import_environment
    assert server_environment.IMPORT_TIME_ENV is depends.IMPORT_TIME_ENV
    # what a served build receives includes everything either list depends on
    assert all(p in server_environment.BUILD_ENV for p in depends.RESOLUTION_ENV + depends.IMPORT_TIME_ENV)


def test_no_other_module_declares_its_own_environment_list():
    """No tuple, list or set literal outside ``depends.py`` names one of the declared prefixes
    (the stamp's ``ENV_PREFIXES`` and the server's own ``IMPORT_TIME_ENV`` were such lists)."""
    declared = {p for p in depends.RESOLUTION_ENV + depends.IMPORT_TIME_ENV if p.endswith("_")}
    found = []
    for path in sorted((REPO / "mergefile").rglob("*.py")):
        if path == REPO / "mergefile" / "depends.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                names = {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
                if names & declared:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: {sorted(names & declared)}")
            elif isinstance(node, ast.Name) and node.id == "ENV_PREFIXES":
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: ENV_PREFIXES")
    assert not found, found
