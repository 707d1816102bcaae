"""A rewritten shard's unchanged tensors come from the current output folder when their blobs
are gone (``run/stale.py::in_previous_output``): a model larger than the cache limit evicts
them, and recomputing them would cost a merge instead of a copy."""

from __future__ import annotations

import shutil
from pathlib import Path

from mergefile.store.store import Store
from tests.helpers import assert_same_tensors, cli_json, mergefile_for, read_tensors

BODY = "out/x: ties(base=base) {{\n    a weight=0.7 weight[{f}]={w} density=0.5\n    b weight=0.5 density=0.4\n}}"


def _build(dir: Path, cache: Path, capsys) -> dict:
    data = cli_json(dir, "--out-shard-size", "1B", "out/x", cache=cache, capsys=capsys)  # one shard
    assert data["exit"] == 0
    return data["targets"][0]


def _drop_final_blobs(cache: Path, keep: set[str]) -> None:
    with Store(cache) as store:
        for k in list(store.blobs.keys()):
            if k not in keep:
                store.blobs.delete(k)


def test_unchanged_tensors_are_copied_from_the_output_when_evicted(tiny_models_bf16, tmp_path, capsys):
    work, cache = tmp_path / "w", tmp_path / "cache"
    work.mkdir()
    mergefile_for(work, tiny_models_bf16, BODY.format(f='"model.norm"', w=0.7))
    cold = _build(work, cache, capsys)
    with Store(cache) as store:
        masks = {k for k in store.blobs.keys() if store.blobs.info(k)[2] < 2000}  # packed stages: small
    _drop_final_blobs(cache, masks)  # as if evicted; the stages stay or are recomputed
    assert len(list((work / "out" / "x").glob("*.safetensors"))) == 1

    mergefile_for(work, tiny_models_bf16, BODY.format(f='"model.norm"', w=0.3))  # one tensor changes
    edit = _build(work, cache, capsys)
    assert edit["computed"] == 1, edit
    assert edit["from_output"] == cold["computed"] - 1 and edit["cache_hits"] == 0

    clean = tmp_path / "clean"
    shutil.copytree(work, clean, ignore=shutil.ignore_patterns("out"))
    _build(clean, tmp_path / "cache2", capsys)
    assert_same_tensors(read_tensors(work / "out" / "x"), read_tensors(clean / "out" / "x"))


def test_a_modified_output_shard_is_not_trusted(tiny_models_bf16, tmp_path, capsys):
    work, cache = tmp_path / "w", tmp_path / "cache"
    work.mkdir()
    mergefile_for(work, tiny_models_bf16, BODY.format(f='"model.norm"', w=0.7))
    cold = _build(work, cache, capsys)
    _drop_final_blobs(cache, set())
    shard = next((work / "out" / "x").glob("*.safetensors"))
    shard.touch()  # changed on disk since its manifest entry: recompute, never copy
    mergefile_for(work, tiny_models_bf16, BODY.format(f='"model.norm"', w=0.3))
    edit = _build(work, cache, capsys)
    assert edit["computed"] == cold["computed"]
