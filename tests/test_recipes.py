"""Every recipe under recipes/ plans, and each mergekit config builds the same model as its twin.

Recipes are found recursively (``Mergefile`` and ``*.yml``), skipping ``recipes/ci/`` (a GitHub
workflow) and generated ``models/``, ``out/`` and ``cache/`` folders. They run in a copy of
recipes/ whose demo models are generated once per session.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mergefile.demo import make_demo
from mergefile.plan.graph import build_graph, build_order
from mergefile.plan.planner import Planner
from mergefile.syntax import load_yaml_targets, parse_mergefile
from mergefile.syntax.ast import Mergefile
from tests.helpers import REPO, assert_same_tensors, cli, read_tensors

RECIPES = REPO / "recipes"
SKIP_PARTS = {"models", "out", "cache"}


def _recipe_files() -> list[Path]:
    found = [*RECIPES.rglob("Mergefile"), *RECIPES.rglob("*.yml"), *RECIPES.rglob("*.yaml")]
    keep = []
    for path in sorted(found):
        rel = path.relative_to(RECIPES)
        if rel.parts[0] == "ci" or SKIP_PARTS & set(rel.parts[:-1]):
            continue
        keep.append(rel)
    return keep


RECIPE_FILES = _recipe_files()
TWINS = sorted(
    {p.parent for p in RECIPE_FILES if p.name == "merge.yml"}
    & {p.parent for p in RECIPE_FILES if p.name == "Mergefile"}
)


def _header(text: str) -> list[str]:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


@pytest.fixture(scope="session")
def recipes_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """recipes/ without generated folders, plus freshly generated demo models."""
    root = tmp_path_factory.mktemp("recipes") / "recipes"
    shutil.copytree(RECIPES, root, ignore=shutil.ignore_patterns(*SKIP_PARTS))
    make_demo(root / "demo" / "models")
    return root


def _final_name(path: Path) -> str:
    """The target a YAML recipe's header builds (``--config merge.yml out/x``)."""
    for line in _header(path.read_text()):
        if "--config" in line:
            words = line.split()
            return words[words.index("--config") + 2]
    raise AssertionError(f"{path}: the header gives no 'mergebuild ... --config FILE TARGET' command")


def _plan_all(mf: Mergefile, names: list[str]) -> None:
    planner = Planner(mf)
    for name in build_order(mf, build_graph(mf), names):
        assert planner.plan(name).jobs


def test_recipes_are_found():
    assert len(RECIPE_FILES) >= 13  # the demo and six mergekit-style pairs
    assert {"linear", "slerp", "ties", "dare_ties", "frankenmerge", "multi-stage"} <= {p.name for p in TWINS}


@pytest.mark.parametrize("rel", RECIPE_FILES, ids=[str(p) for p in RECIPE_FILES])
def test_recipe_has_a_header_and_plans(rel: Path, recipes_copy: Path):
    path = recipes_copy / rel
    header = " ".join(_header(path.read_text()))
    assert "mergebuild" in header, f"{rel}: the header must give the exact command to run it"
    if path.name == "Mergefile":
        mf = parse_mergefile(path)
        _plan_all(mf, [])
        return
    targets = load_yaml_targets(path, _final_name(path))
    _plan_all(Mergefile(str(path.parent / "Mergefile"), targets), [targets[-1].name])


@pytest.mark.parametrize("folder", TWINS, ids=[str(p) for p in TWINS])
def test_yaml_and_mergefile_twins_build_the_same_model(folder: Path, recipes_copy: Path, tmp_path: Path):
    work = recipes_copy / folder
    target = _final_name(work / "merge.yml")
    cache = tmp_path / "cache"
    assert cli(work, "--config", "merge.yml", target, cache=cache) == 0
    from_yaml = read_tensors(work / target)
    shutil.rmtree(work / "out")
    assert cli(work, target, cache=cache) == 0
    assert_same_tensors(from_yaml, read_tensors(work / target))
    shutil.rmtree(work / "out")
