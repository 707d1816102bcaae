"""Cold targets take their keys as the build reads the inputs (``run/deferred.py``).

One pass over the input bytes instead of two, with the same keys and bytes as a keyed build;
a build stopped half-way resumes from the store; targets other targets read, and targets with
an output folder, are keyed up front as before.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest

from mergefile.errors import TensorFailed
from mergefile.run.build import BuildOptions, build, plan_build
from mergefile.run.stale import compare
from mergefile.store.manifest import read_manifest
from mergefile.store.store import Store
from mergefile.syntax import parse_mergefile
from tests.helpers import age_files, assert_same_tensors, cli, mergefile_for, read_tensors


@pytest.fixture(autouse=True)
def read_once(monkeypatch):
    """Tiny inputs always fit the page cache: make every cold target read once all the same."""
    monkeypatch.setenv("MERGEBUILD_READ_ONCE", "always")


RECIPE = (
    "out/x: dare_ties(base=base) { a weight=0.6 density=0.5 ; b weight=0.4 density=0.7 }\n"
    "out/y: linear { a weight=1 ; b weight=3 }\n"
    "all: out/x out/y"
)


@pytest.fixture
def hashes(monkeypatch):
    """(file, tensor) -> times hashed, and the order of hashes and merges (from now on)."""
    from mergefile.run import build as build_mod
    from mergefile.store import statcache

    seen: Counter = Counter()
    events: list[tuple[str, str]] = []
    hasher = statcache._default_hasher

    def counting(path, infos):
        for i in infos:
            seen[(os.path.realpath(path), i.name)] += 1
            events.append(("hash", i.name))
        return hasher(path, infos)

    compute = build_mod.compute_job

    def recording(job, *a, **k):
        events.append(("merge", job.name))
        return compute(job, *a, **k)

    monkeypatch.setattr(statcache, "_default_hasher", counting)
    monkeypatch.setattr(build_mod, "compute_job", recording)
    # one tensor ahead at most: tiny inputs would otherwise all be hashed before the first merge
    monkeypatch.setattr(build_mod, "readahead_window", lambda budget: 1)
    return seen, events


def _build(d, cache, targets=("all",), **kw):
    with Store(cache) as store:
        return build(parse_mergefile(d / "Mergefile"), list(targets), store, BuildOptions(**kw))


def _planned(d, cache, targets=("all",), defer=True):
    with Store(cache) as store:
        return {
            p.name: kp
            for p, kp, _, _ in plan_build(
                parse_mergefile(d / "Mergefile"), list(targets), store, BuildOptions(), defer=defer
            )
        }


def test_a_cold_build_hashes_each_input_tensor_once_right_before_merging_it(tiny_models, tmp_path, hashes):
    seen, events = hashes
    age_files(*tiny_models.values())  # else the racy-clean rule re-hashes fresh files once
    d = tmp_path / "w"
    d.mkdir()
    mergefile_for(d, tiny_models, RECIPE)
    r = _build(d, tmp_path / "cache", jobs=1)
    assert all(t.built for t in r.targets)
    assert seen and set(seen.values()) == {1}  # read once each, though both targets read a and b
    # hashing is interleaved with merging, not a pass before it
    first_merge = next(i for i, e in enumerate(events) if e[0] == "merge")
    assert first_merge < max(i for i, e in enumerate(events) if e[0] == "hash")
    before = Counter(seen)
    assert _build(d, tmp_path / "cache").up_to_date  # digests were recorded: the no-op hashes nothing
    assert seen == before


def test_deferred_keys_and_bytes_equal_a_keyed_build(tiny_models, tmp_path):
    age_files(*tiny_models.values())
    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        d.mkdir()
        mergefile_for(d, tiny_models, RECIPE)
    assert not any(kp.deferred is None for kp in _planned(one, tmp_path / "c1").values())
    _build(one, tmp_path / "c1", jobs=2)
    Store(tmp_path / "c2").close()  # a dry run creates no cache, but records digests in one
    assert cli(two, "-n", "all", cache=tmp_path / "c2") == 0  # a dry run hashes: keys up front
    assert all(kp.deferred is None for kp in _planned(two, tmp_path / "c2").values())
    _build(two, tmp_path / "c2", jobs=2)
    for name in ("x", "y"):
        assert_same_tensors(read_tensors(one / "out" / name), read_tensors(two / "out" / name))
        m1, m2 = read_manifest(str(one / "out" / name)), read_manifest(str(two / "out" / name))
        assert {n: t["key"] for n, t in m1.tensors.items()} == {n: t["key"] for n, t in m2.tensors.items()}
    keyed = _planned(one, tmp_path / "c1", defer=False)  # the usual keys, from the recorded digests
    for name in ("out/x", "out/y"):
        man = read_manifest(str(one / name))
        assert keyed[name].keys == {n: t["key"] for n, t in man.tensors.items()}


def test_a_stopped_cold_build_resumes_from_the_store(tiny_models, tmp_path, monkeypatch):
    from mergefile.run import build as build_mod

    d = tmp_path / "w"
    d.mkdir()
    mergefile_for(d, tiny_models, RECIPE.split("\n")[0])
    compute, calls = build_mod.compute_job, []

    def failing(job, *a, **k):
        calls.append(job.name)
        if len(calls) == 6:
            raise RuntimeError("disk on fire")
        return compute(job, *a, **k)

    monkeypatch.setattr(build_mod, "compute_job", failing)
    with pytest.raises(TensorFailed, match="disk on fire"):  # named for the user
        _build(d, tmp_path / "cache", ["out/x"], jobs=1)
    assert not (d / "out/x").exists()
    monkeypatch.setattr(build_mod, "compute_job", compute)
    r = _build(d, tmp_path / "cache", ["out/x"], jobs=1).targets[0]
    total = len(read_manifest(str(d / "out/x")).tensors)
    assert r.built and r.cache_hits == 5 and r.computed == total - 5
    clean = tmp_path / "clean"
    clean.mkdir()
    mergefile_for(clean, tiny_models, RECIPE.split("\n")[0])
    _build(clean, tmp_path / "cache2", ["out/x"])
    assert_same_tensors(read_tensors(d / "out/x"), read_tensors(clean / "out/x"))


def test_only_cold_targets_nobody_reads_are_deferred(tiny_models, tmp_path):
    d = tmp_path / "w"
    d.mkdir()
    mergefile_for(
        d,
        tiny_models,
        "out/a: linear(weight=1) { a ; b }\nout/b: linear(weight=1) { out/a ; base }\nout/c: linear(weight=1) { a ; c }\n",
    )
    kps = _planned(d, tmp_path / "cache", ["out/b", "out/c"])
    assert kps["out/a"].deferred is None  # out/b's keys are made of its keys
    assert kps["out/b"].deferred is None  # reads a target
    assert kps["out/c"].deferred is not None
    assert all(kp.deferred is None for kp in _planned(d, tmp_path / "cache", ["out/c"], defer=False).values())
    _build(d, tmp_path / "cache", ["out/c"])
    (d / "Mergefile").write_text((d / "Mergefile").read_text().replace("{ a ; c }", "{ a ; c weight=2 }"))
    assert _planned(d, tmp_path / "cache2", ["out/c"])["out/c"].deferred is None  # an output folder exists


def test_a_target_built_meanwhile_is_keyed_and_up_to_date(tiny_models, tmp_path):
    d = tmp_path / "w"
    d.mkdir()
    mergefile_for(d, tiny_models, RECIPE.split("\n")[1])
    with Store(tmp_path / "cache") as store:
        [(_, kp, _, _)] = plan_build(parse_mergefile(d / "Mergefile"), ["out/y"], store, BuildOptions(), defer=True)
        assert kp.deferred is not None
        _build(d, tmp_path / "other-cache", ["out/y"])  # another process, another cache
        st = compare(kp, read_manifest(str(d / "out/y")).aux_key)
    assert kp.deferred is None and st.up_to_date


def test_auto_reads_once_only_what_does_not_fit_the_page_cache(tiny_models, tmp_path, monkeypatch):
    from mergefile.run import deferred

    d = tmp_path / "w"
    d.mkdir()
    mergefile_for(d, tiny_models, RECIPE.split("\n")[1])
    monkeypatch.setenv("MERGEBUILD_READ_ONCE", "auto")
    monkeypatch.setattr(deferred, "page_cache_bytes", lambda: 10**15)
    assert _planned(d, tmp_path / "c1", ["out/y"])["out/y"].deferred is None  # fits: hash first
    monkeypatch.setattr(deferred, "page_cache_bytes", lambda: 1000)
    assert _planned(d, tmp_path / "c2", ["out/y"])["out/y"].deferred is not None
    monkeypatch.setenv("MERGEBUILD_READ_ONCE", "never")
    assert _planned(d, tmp_path / "c3", ["out/y"])["out/y"].deferred is None
    monkeypatch.undo()
    assert deferred.page_cache_bytes() > 0


def test_a_bad_read_once_value_is_a_user_error(tiny_models, tmp_path, monkeypatch, capsys):
    d = tmp_path / "w"
    d.mkdir()
    mergefile_for(d, tiny_models, RECIPE.split("\n")[1])
    monkeypatch.setenv("MERGEBUILD_READ_ONCE", "sometimes")
    assert cli(d, "out/y", cache=tmp_path / "cache") == 2
    assert "MERGEBUILD_READ_ONCE='sometimes': use one of auto, always, never" in capsys.readouterr().err


def test_a_failing_hash_fails_a_read_once_build_cleanly(tiny_models, tmp_path, capsys, monkeypatch):
    """A hash that fails on a readahead thread (the file was cut short after planning checked
    it) reaches the user as in a keyed build: exit 2, the file named, no traceback, no output."""
    from mergefile.errors import UserError
    from mergefile.store import statcache

    hasher = statcache._default_hasher

    def failing(path, infos):
        if any(i.name == "model.layers.2.mlp.up_proj.weight" for i in infos):
            raise UserError(f"'{path}' is shorter than its header says")
        return hasher(path, infos)

    monkeypatch.setattr(statcache, "_default_hasher", failing)
    d = tmp_path / "w"
    d.mkdir()
    mergefile_for(d, tiny_models, "out/x: linear { a weight=1 ; b weight=1 }")
    capsys.readouterr()
    assert cli(d, cache=tmp_path / "cache") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "model.safetensors' is shorter than its header says" in err
    assert not (d / "out" / "x").exists()
    assert cli(d, cache=tmp_path / "cache") == 2  # and again, from a stat-cache that recorded the rest


def test_one_target_reads_ahead_while_planning(tiny_models, tmp_path):
    """Many cold targets must not each start a window of reads and hash threads at plan time:
    the first does (overlapping planning and torch's import), the others when they build."""
    d = tmp_path / "w"
    d.mkdir()
    mergefile_for(d, tiny_models, RECIPE)
    with Store(tmp_path / "cache") as store:
        planned = plan_build(parse_mergefile(d / "Mergefile"), ["all"], store, BuildOptions(), defer=True)
        reading = [kp.deferred._pool is not None for _, kp, _, _ in planned]
        for _, kp, _, _ in planned:
            kp.deferred.close()
    assert reading == [True, False]
