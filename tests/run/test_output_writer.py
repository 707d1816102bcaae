"""The streaming output writer: a shard is on disk as soon as its last tensor arrives, tensors held
in memory are never re-read, the byte cap falls back to the blob store, and the folder it
publishes is byte-for-byte a one-pass write."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergefile.io.reader import TensorReader
from mergefile.run.build import BuildOptions, plan_build
from mergefile.run.compute import InputLoader, compute_job
from mergefile.run.publish import OutputWriter
from mergefile.store.store import Store
from mergefile.syntax import parse_mergefile
from tests.helpers import cli, mergefile_for, shard_bytes

RECIPE = "out/m: linear { base weight=1 ; a weight=2 }"


@pytest.fixture()
def planned(tiny_models, tmp_path: Path):
    mergefile_for(tmp_path, tiny_models, RECIPE)
    store = Store(tmp_path / "cache")
    ((plan, kp, _, aux),) = plan_build(parse_mergefile(tmp_path / "Mergefile"), ["out/m"], store, BuildOptions())
    reader = TensorReader()
    loader = InputLoader(plan, reader, store.blobs)
    yield plan, kp, aux, loader, store
    reader.close()
    store.close()


def _reference(tiny_models, tmp_path: Path) -> dict[str, bytes]:
    ref = tmp_path / "reference"
    ref.mkdir()
    mergefile_for(ref, tiny_models, RECIPE)
    assert cli(ref, cache=ref / "cache") == 0
    return shard_bytes(ref / "out/m")


def _recording_fetch(kp, store):
    """A writer's ``fetch`` from the blob store, and the list of names it was asked for."""
    fetched: list[str] = []

    def fetch(name: str):
        fetched.append(name)
        return store.blobs.get_raw(kp.keys[name], verify=True)

    return fetch, fetched


def test_shards_stream_out_from_memory(planned, tiny_models, tmp_path) -> None:
    plan, kp, aux, loader, store = planned
    fetch, fetched = _recording_fetch(kp, store)
    jobs = {j.name: j for j in plan.jobs}
    w = OutputWriter(plan, kp.keys, kp.recipes, set(), aux, fetch, set(jobs), keep_bytes=1 << 30)
    by_shard: dict[str, list[str]] = {}
    for j in plan.jobs:
        by_shard.setdefault(plan.shard_of(j), []).append(j.name)
    first = sorted(by_shard)[0]
    for name in by_shard[first]:
        w.add(name, compute_job(jobs[name], kp, loader, store.blobs)[0])
    for f in list(w._queued):
        f.result()
    assert (w.tmp / first).is_file()  # on disk before the build is over
    assert not (plan.out_dir).exists()  # nothing published yet
    for shard in sorted(by_shard)[1:]:
        for name in by_shard[shard]:
            w.add(name, compute_job(jobs[name], kp, loader, store.blobs)[0])
    w.finish()
    assert fetched == []  # every tensor was written from memory
    assert shard_bytes(plan.out_dir) == _reference(tiny_models, tmp_path)


def test_over_the_cap_tensors_come_back_from_the_cache(planned, tiny_models, tmp_path) -> None:
    plan, kp, aux, loader, store = planned
    fetch, fetched = _recording_fetch(kp, store)
    w = OutputWriter(plan, kp.keys, kp.recipes, set(), aux, fetch, {j.name for j in plan.jobs}, keep_bytes=0)
    for j in plan.jobs:
        w.add(j.name, compute_job(j, kp, loader, store.blobs)[0])  # stored in the blob store as it goes
    w.finish()
    last = {plan.shard_of(j): j.name for j in plan.jobs}.values()  # each shard's last: written at once
    assert sorted(fetched) == sorted(j.name for j in plan.jobs if j.name not in last)
    assert shard_bytes(plan.out_dir) == _reference(tiny_models, tmp_path)


def test_dropped_tensors_are_spilled_where_fetch_finds_them(planned, tiny_models, tmp_path) -> None:
    """A result the cache policy did not keep (``run/cache_policy.py``) and the writer cannot hold
    goes to the cache through ``spill`` before it is dropped; the shard is then the same."""
    from mergefile.io.writer import raw_tensor

    plan, kp, aux, loader, store = planned
    fetch, fetched = _recording_fetch(kp, store)
    spilled: list[str] = []

    def spill(name, t) -> int:
        spilled.append(name)
        return store.blobs.put_raw(kp.keys[name], raw_tensor(t))

    w = OutputWriter(plan, kp.keys, kp.recipes, set(), aux, fetch, {j.name for j in plan.jobs}, 0, spill)
    for j in plan.jobs:
        t = compute_job(j, kp, loader, store.blobs)[0]
        store.blobs.delete(kp.keys[j.name])  # as if the policy had not kept it
        w.add(j.name, t)
    w.finish()
    assert spilled == fetched and spilled  # each dropped tensor spilled, then read back
    assert w.spilled >= sum(store.blobs.get_raw(kp.keys[n]).data.nbytes for n in spilled)  # counted as written
    assert shard_bytes(plan.out_dir) == _reference(tiny_models, tmp_path)


def test_abort_leaves_nothing(planned) -> None:
    plan, kp, aux, loader, store = planned
    w = OutputWriter(plan, kp.keys, kp.recipes, set(), aux, lambda n: None, {j.name for j in plan.jobs}, 1 << 30)
    j = plan.jobs[0]
    w.add(j.name, compute_job(j, kp, loader, store.blobs)[0])
    w.abort()
    assert not w.tmp.exists() and not plan.out_dir.exists()
