"""The result policy (``run/cache_policy.py::keep_result``, docs/cache.md): a staged method's
final tensor is not cached when its masks are and the torch-free kernels can make it again.

What must hold: the cache of a cold bf16 TIES build holds masks only; every way back to a
tensor that is no longer cached — the output folder deleted, a weight toggled back, one layer
edited in a one-shard output, a downstream target reading this one — gives a clean build's bits;
float32 inputs and ``MERGEBUILD_RESULT_CACHE=always`` keep every result.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mergefile.run.build import BuildOptions, plan_build
from mergefile.store.store import Store
from mergefile.syntax import parse_mergefile
from tests.helpers import assert_same_tensors, cli, cli_json, mergefile_for, read_tensors

BODY = "out/x: ties(base=base) {{\n    a weight={wa} density=0.5\n    b weight=0.5 density=0.4\n}}"
CHAIN = "\nout/y: linear {{ out/x weight=0.5 ; a weight=0.5 }}\nall: out/x out/y"


def _build(dir: Path, cache: Path, capsys, target: str = "out/x", *args: str) -> list[dict]:
    data = cli_json(dir, *args, target, cache=cache, capsys=capsys)
    assert data["exit"] == 0, data
    return data["targets"]


def _final_keys(dir: Path, cache: Path, target: str = "out/x") -> set[str]:
    with Store(cache) as store:
        plans = plan_build(parse_mergefile(dir / "Mergefile"), [target], store, BuildOptions())
        return {k for plan in plans if plan[0].name == target for k in plan[1].keys.values()}


def _cached(cache: Path) -> set[str]:
    with Store(cache) as store:
        return set(store.blobs.keys())


def _clean(tmp_path: Path, models, text: str, target: str = "out/x", name: str = "clean") -> Path:
    d = tmp_path / name
    d.mkdir()
    mergefile_for(d, models, text)
    assert cli(d, target, cache=tmp_path / f"{name}-cache") == 0
    return d


def test_a_cold_bf16_ties_build_caches_masks_not_results(tiny_models_bf16, tmp_path, capsys):
    work, cache = tmp_path / "w", tmp_path / "cache"
    work.mkdir()
    mergefile_for(work, tiny_models_bf16, BODY.format(wa=0.7))
    (cold,) = _build(work, cache, capsys)
    finals = _final_keys(work, cache)
    held = _cached(cache)
    assert cold["stage_misses"] > 0
    assert not finals & held  # every result can be made again from its masks
    assert len(held) == cold["stage_misses"]  # the masks, nothing else
    out = sum(f.stat().st_size for f in (work / "out" / "x").glob("*.safetensors"))
    with Store(cache) as store:
        assert sum(store.blobs.info(k)[2] for k in held) <= 0.2 * out


def test_result_cache_always_keeps_every_result(tiny_models_bf16, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MERGEBUILD_RESULT_CACHE", "always")
    work, cache = tmp_path / "w", tmp_path / "cache"
    work.mkdir()
    mergefile_for(work, tiny_models_bf16, BODY.format(wa=0.7))
    _build(work, cache, capsys)
    assert _final_keys(work, cache) <= _cached(cache)


def test_float32_results_are_kept(tiny_models, tmp_path, capsys):
    """No torch-free path for float32: making a result again would mean torch's steps."""
    work, cache = tmp_path / "w", tmp_path / "cache"
    work.mkdir()
    mergefile_for(work, tiny_models, BODY.format(wa=0.7))
    _build(work, cache, capsys)
    assert _final_keys(work, cache) <= _cached(cache)


def test_a_deleted_output_is_made_again_from_the_masks(tiny_models_bf16, tmp_path, capsys):
    work, cache = tmp_path / "w", tmp_path / "cache"
    work.mkdir()
    mergefile_for(work, tiny_models_bf16, BODY.format(wa=0.7))
    (cold,) = _build(work, cache, capsys)
    shutil.rmtree(work / "out")
    (again,) = _build(work, cache, capsys)
    assert again["computed"] == cold["computed"]
    assert again["stage_misses"] == 0 and again["stage_hits"] == cold["stage_misses"]
    clean = _clean(tmp_path, tiny_models_bf16, BODY.format(wa=0.7))
    assert_same_tensors(read_tensors(work / "out" / "x"), read_tensors(clean / "out" / "x"))


@pytest.mark.parametrize("shard", ["1B", "5B"])
def test_weight_toggled_back_and_a_one_layer_edit_equal_clean_builds(tiny_models_bf16, tmp_path, capsys, shard):
    """``1B``: every tensor in one shard (``mergebuild yaml``'s layout), so a one-tensor edit
    rewrites the shard and the others are copied from the output folder."""
    work, cache = tmp_path / "w", tmp_path / "cache"
    work.mkdir()
    args = ("--out-shard-size", shard) if shard == "1B" else ()
    mergefile_for(work, tiny_models_bf16, BODY.format(wa=0.7))
    (cold,) = _build(work, cache, capsys, "out/x", *args)
    mergefile_for(work, tiny_models_bf16, BODY.format(wa=0.2))
    _build(work, cache, capsys, "out/x", *args)
    mergefile_for(work, tiny_models_bf16, BODY.format(wa=0.7))  # back: the masks, not cached results
    (back,) = _build(work, cache, capsys, "out/x", *args)
    assert back["computed"] == cold["computed"] and back["stage_misses"] == 0
    clean = _clean(tmp_path, tiny_models_bf16, BODY.format(wa=0.7))
    assert_same_tensors(read_tensors(work / "out" / "x"), read_tensors(clean / "out" / "x"))

    layer = BODY.format(wa=0.7).replace("a weight=0.7", 'a weight=0.7 weight["model.norm"]=0.3')
    mergefile_for(work, tiny_models_bf16, layer)
    (edit,) = _build(work, cache, capsys, "out/x", *args)
    assert edit["computed"] == 1, edit
    if shard == "1B":  # the rest of the one shard: copied, and said so
        assert edit["from_output"] == cold["computed"] - 1 and edit["cache_hits"] == 0
    clean2 = _clean(tmp_path, tiny_models_bf16, layer, name="clean2")
    assert_same_tensors(read_tensors(work / "out" / "x"), read_tensors(clean2 / "out" / "x"))


def test_a_downstream_target_reads_an_uncached_upstream(tiny_models_bf16, tmp_path, capsys):
    """out/y reads out/x, whose results the cache does not hold: from out/x's folder."""
    work, cache = tmp_path / "w", tmp_path / "cache"
    work.mkdir()
    text = BODY.format(wa=0.7) + CHAIN.format()
    mergefile_for(work, tiny_models_bf16, text)
    _build(work, cache, capsys, "all")
    assert not _final_keys(work, cache) & _cached(cache)
    clean = _clean(tmp_path, tiny_models_bf16, text, target="all")
    for t in ("x", "y"):
        assert_same_tensors(read_tensors(work / "out" / t), read_tensors(clean / "out" / t))

    mergefile_for(work, tiny_models_bf16, text.replace("out/x weight=0.5", "out/x weight=0.25"))  # only out/y
    _build(work, cache, capsys, "all")
    clean2 = _clean(tmp_path, tiny_models_bf16, text.replace("out/x weight=0.5", "out/x weight=0.25"), "all", "c2")
    assert_same_tensors(read_tensors(work / "out" / "y"), read_tensors(clean2 / "out" / "y"))
