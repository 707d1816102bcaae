"""Differential test: bf16 merges equal mergekit 0.1.5's recorded outputs (tests/data/mergekit_ref).

mergekit computes in its ``dtype``; so does mergebuild. Outputs must be equal entry for entry,
except where a selection cut (TIES/breadcrumbs top-k, SCE top-k) falls inside a group of exactly
equal values: mergekit's unstable sort keeps an arbitrary member there, mergebuild the first by
position. The recordings come from ``bench/mergekit_diff.py --record`` (same recipes, same
seeded inputs, checked by digest).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.helpers import REPO, cli, read_tensors

REF = REPO / "tests" / "data" / "mergekit_ref"


def _bench():
    spec = importlib.util.spec_from_file_location("mergekit_diff", REPO / "bench" / "mergekit_diff.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


BENCH = _bench()
SELECTING = {"ties", "breadcrumbs_ties", "sce"}


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> dict[str, Path]:
    models = BENCH.make_family(tmp_path_factory.mktemp("mk_family"))
    return models


def _reference(recipe: str) -> tuple[dict[str, torch.Tensor], str]:
    path = REF / f"{recipe}.safetensors"
    with safe_open(str(path), "pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata()["inputs_sha256"]


def _build(recipe: str, family: dict[str, Path], tmp_path: Path) -> dict[str, torch.Tensor]:
    cfg = tmp_path / f"{recipe}.yml"
    cfg.write_text(BENCH.config_yaml(recipe, family))
    assert cli(tmp_path, "--config", str(cfg), "out", cache=tmp_path / "cache") == 0
    return read_tensors(tmp_path / "out")


@pytest.mark.parametrize("recipe", sorted(BENCH.RECIPES))
def test_equals_mergekit_except_tied_cuts(recipe: str, family, tmp_path):
    ref, digest = _reference(recipe)
    assert BENCH.family_digest(family) == digest, "inputs changed: re-record with bench/mergekit_diff.py --record"
    mine = _build(recipe, family, tmp_path)
    inputs = [BENCH.read_dir(family[m]) for m in ("base", *BENCH.RECIPES[recipe][3])]
    stats = BENCH.compare(mine, ref, recipe, inputs)
    assert stats["tensors"] == len(ref) == len(mine)
    if recipe not in SELECTING:
        assert stats["differing"] == 0, stats
        return
    assert stats["of_them_no_tied_cut"] == 0, stats  # no tensor differs without a tie at its cut
    if recipe != "sce":  # SCE's matrix weights follow its mask, so a flip moves the whole tensor
        assert stats["at_tied_cut"] == stats["differing"], stats
    assert 0 < stats["differing"] < stats["entries"] // 10, stats  # the ties are there, and few


def test_tie_positions_find_a_straddling_group():
    """The tie detector the assertions above rely on: a cut inside a run of equal values."""
    v = torch.tensor([1.0, 2.0, 2.0, 2.0, 3.0])
    assert BENCH._straddling(v, 2, 5).tolist() == [False, True, True, True, False]
    assert not BENCH._straddling(v, 1, 4).any()
