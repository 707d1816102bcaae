"""The stage cache policy (docs/cache.md, "Stages"): packed keep-masks, at most 1.3x the output.

A cold build of a sparsifying method caches each model's selection as one bit per entry (plus
its rescale factor), so the cache holds the output plus a few percent; a weight edit reapplies
every cached selection (all stage hits) and equals a clean build bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mergefile.methods import get_method
from mergefile.run.cache_policy import STAGE_SHARE
from mergefile.run.cache_policy import keep_stages as _keep_stages
from mergefile.store.store import Store
from tests.helpers import assert_same_tensors, cli_json, mergefile_for, read_tensors

RECIPES = {
    "ties": "ties(base=base) {{ a weight={wa} density=0.5 ; b weight={wb} density={db} }}",
    "dare_ties": "dare_ties(base=base) {{ a weight={wa} density=0.5 ; b weight={wb} density={db} }}",
    "breadcrumbs_ties": "breadcrumbs_ties(base=base) {{ a weight={wa} density=0.5 gamma=0.05 ; b weight={wb} density={db} }}",
    "della": "della(base=base) {{ a weight={wa} density=0.5 epsilon=0.1 ; b weight={wb} density={db} }}",
}


def _write(dir: Path, models, method: str, wa=0.7, wb=0.5, db=0.4) -> None:
    mergefile_for(dir, models, "out/x: " + RECIPES[method].format(wa=wa, wb=wb, db=db))


def _out_bytes(dir: Path) -> int:
    return sum(f.stat().st_size for f in (dir / "out" / "x").glob("*.safetensors"))


def _cache_bytes(cache: Path) -> int:
    with Store(cache) as store:
        return sum(store.blobs.info(k)[2] for k in store.blobs.keys())


def _build(dir: Path, cache: Path, capsys) -> dict:
    data = cli_json(dir, "out/x", cache=cache, capsys=capsys)
    assert data["exit"] == 0
    return data["targets"][0]


@pytest.mark.parametrize("method", sorted(RECIPES))
def test_cold_cache_is_within_1_3x_and_a_weight_edit_hits_every_stage(method, tiny_models_bf16, tmp_path, capsys):
    work, cache = tmp_path / "w", tmp_path / "cache"
    work.mkdir()
    _write(work, tiny_models_bf16, method)
    cold = _build(work, cache, capsys)
    assert cold["stage_misses"] > 0 and cold["stage_hits"] == 0
    assert _cache_bytes(cache) <= 1.3 * _out_bytes(work)

    _write(work, tiny_models_bf16, method, wa=0.2, wb=0.9)  # every tensor's weights change
    edit = _build(work, cache, capsys)
    assert edit["computed"] == cold["computed"] and edit["stage_misses"] == 0
    assert edit["stage_hits"] == cold["stage_misses"]

    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    _write(clean_dir, tiny_models_bf16, method, wa=0.2, wb=0.9)
    _build(clean_dir, tmp_path / "clean-cache", capsys)
    assert_same_tensors(read_tensors(work / "out" / "x"), read_tensors(clean_dir / "out" / "x"))


def test_a_density_edit_recomputes_only_that_models_stages(tiny_models_bf16, tmp_path, capsys):
    work, cache = tmp_path / "w", tmp_path / "cache"
    work.mkdir()
    _write(work, tiny_models_bf16, "ties")
    cold = _build(work, cache, capsys)
    _write(work, tiny_models_bf16, "ties", db=0.6)
    edit = _build(work, cache, capsys)
    assert edit["stage_hits"] == edit["stage_misses"] == cold["stage_misses"] // 2
    clean = tmp_path / "clean"
    clean.mkdir()
    _write(clean, tiny_models_bf16, "ties", db=0.6)
    _build(clean, tmp_path / "c2", capsys)
    assert_same_tensors(read_tensors(work / "out" / "x"), read_tensors(clean / "out" / "x"))


def test_stage_cache_never_keeps_only_the_output(tiny_models_bf16, tmp_path, capsys, monkeypatch):
    work, cache = tmp_path / "w", tmp_path / "cache"
    work.mkdir()
    _write(work, tiny_models_bf16, "ties")
    monkeypatch.setenv("MERGEBUILD_STAGE_CACHE", "never")
    _build(work, cache, capsys)
    assert _cache_bytes(cache) == _out_bytes(work) - _header_bytes(work)
    _write(work, tiny_models_bf16, "ties", wa=0.1)
    assert _build(work, cache, capsys)["stage_hits"] == 0


def _header_bytes(work: Path) -> int:
    """The output's safetensors headers (8-byte length + JSON per shard), not tensor data."""
    total = 0
    for f in (work / "out" / "x").glob("*.safetensors"):
        with open(f, "rb") as fh:
            total += 8 + int.from_bytes(fh.read(8), "little")
    return total


def test_auto_policy_keeps_masks_while_they_fit_the_share():
    """bf16: a mask is 1/16 of a tensor, so 4 staged models fit 0.3x and 5 do not."""
    ties = get_method("ties")
    t = [torch.zeros(64, 64, dtype=torch.bfloat16)]
    assert STAGE_SHARE == 0.3
    assert _keep_stages(ties, t, 0, 4) and not _keep_stages(ties, t, 0, 5)
    f32 = [torch.zeros(64, 64)]
    assert _keep_stages(ties, f32, 0, 9) and not _keep_stages(ties, f32, 0, 10)
