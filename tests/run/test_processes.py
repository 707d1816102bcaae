"""Several processes, one cache: concurrent builds, and a build killed mid-way."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mergefile.store.store import Store
from tests.helpers import REPO, assert_same_tensors, cli, mergefile_for, read_tensors, run_subprocess, shard_bytes

SLOW_BUILD = textwrap.dedent(
    """
    import sys, time
    import mergefile.run.compute as compute
    real = compute.compute_job
    def slow(*a, **k):
        time.sleep(float(sys.argv[1]))
        return real(*a, **k)
    compute.compute_job = slow
    import mergefile.run.build as build
    build.compute_job = slow
    from mergefile.cli.main import main
    sys.exit(main(sys.argv[2:]))
    """
)


def slow_build(d: Path, cache: Path, delay: float, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_BUILD, str(delay), "-C", str(d), "--quiet", "--cache-dir", str(cache), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


@pytest.mark.parametrize("read_once", ["auto", "always"])  # always: cold targets keyed as they are read
def test_two_builds_at_once_on_one_cache(tiny_models, tmp_path, monkeypatch, read_once):
    monkeypatch.setenv("MERGEBUILD_READ_ONCE", read_once)
    d, cache = tmp_path / "w", tmp_path / "cache"
    d.mkdir()
    mergefile_for(
        d,
        tiny_models,
        """
out/x: linear { a weight=1 ; b weight=2 }
out/y: task_arithmetic(base=base) { a weight=1 ; c weight=1 }
""",
    )
    p1 = slow_build(d, cache, 0.02, "out/x")
    p2 = slow_build(d, cache, 0.02, "out/x")
    p3 = slow_build(d, cache, 0.02, "out/y")
    outs = [p.communicate(timeout=300) for p in (p1, p2, p3)]
    assert [p.returncode for p in (p1, p2, p3)] == [0, 0, 0], outs
    waited = [e for _, e in outs[:2] if "being built by another mergebuild" in e]
    built = [o for o, _ in outs[:2] if "built" in o]
    assert len(built) + len(waited) >= 1
    clean, clean_cache = tmp_path / "clean", tmp_path / "clean-cache"
    clean.mkdir()
    (clean / "Mergefile").write_text((d / "Mergefile").read_text())
    assert cli(clean, "out/x", "out/y", cache=clean_cache) == 0
    for t in ("out/x", "out/y"):
        assert_same_tensors(read_tensors(d / t), read_tensors(clean / t))
    with Store(cache) as store:
        assert store.blobs.verify_all() == []
    assert cli(d, "-q", "out/x", "out/y", cache=cache) == 0


def test_killed_build_leaves_old_output_and_resumes(tiny_models, tmp_path):
    d, cache = tmp_path / "w", tmp_path / "cache"
    d.mkdir()
    mf = mergefile_for(d, tiny_models, "out/x: linear { a weight=1 ; b weight=1 }")
    assert cli(d, cache=cache) == 0
    old = shard_bytes(d / "out/x")
    mf.write_text(mf.read_text().replace("b weight=1", "b weight=3"))
    p = slow_build(d, cache, 0.1)
    logs = cache / "logs"
    deadline = time.time() + 120
    computed = 0
    while time.time() < deadline and computed < 5:
        time.sleep(0.05)
        runs = sorted(logs.glob("*.jsonl"))
        if len(runs) >= 2:
            computed = runs[-1].read_text().count('"computed"')
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert computed >= 5
    assert shard_bytes(d / "out/x") == old  # the old version, whole
    r = run_subprocess(d, "--json", "--cache-dir", str(cache))
    assert r.returncode == 0, r.stderr
    import json

    report = json.loads(r.stdout)["targets"][0]
    assert report["computed"] < 39  # work done before the kill was reused
    assert report["cache_hits"] >= 5
    clean, clean_cache = tmp_path / "clean", tmp_path / "clean-cache"
    clean.mkdir()
    (clean / "Mergefile").write_text(mf.read_text())
    assert cli(clean, cache=clean_cache) == 0
    assert shard_bytes(d / "out/x") == shard_bytes(clean / "out/x")
    assert not [q for q in (d / "out").iterdir() if ".mergebuild-tmp" in q.name or ".mergebuild-old" in q.name]


def test_killed_cold_read_once_build_leaves_nothing_and_resumes(tiny_models, tmp_path, monkeypatch):
    """A cold build that takes its keys as it reads (run/deferred.py), killed: no output folder,
    no temp left; the rerun finds the tensors done before the kill and equals a clean build."""
    monkeypatch.setenv("MERGEBUILD_READ_ONCE", "always")  # tiny inputs would otherwise be hashed first
    d, cache = tmp_path / "w", tmp_path / "cache"
    d.mkdir()
    mf = mergefile_for(
        d, tiny_models, "out/x: dare_ties(base=base) { a weight=1 density=0.5 ; b weight=1 density=0.7 }"
    )
    p = slow_build(d, cache, 0.1)
    deadline, computed = time.time() + 120, 0
    while time.time() < deadline and computed < 5:
        time.sleep(0.05)
        runs = sorted((cache / "logs").glob("*.jsonl"))
        if runs:
            computed = runs[-1].read_text().count('"computed"')
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert computed >= 5
    assert not (d / "out" / "x").exists()  # (its temp folder is swept by the next build)
    r = run_subprocess(d, "--json", "--cache-dir", str(cache))
    assert r.returncode == 0, r.stderr
    import json

    report = json.loads(r.stdout)["targets"][0]
    assert report["cache_hits"] >= 5 and report["computed"] + report["cache_hits"] == 39
    clean, clean_cache = tmp_path / "clean", tmp_path / "clean-cache"
    clean.mkdir()
    (clean / "Mergefile").write_text(mf.read_text())
    assert cli(clean, cache=clean_cache) == 0
    assert_same_tensors(read_tensors(d / "out/x"), read_tensors(clean / "out/x"))
    assert not [q for q in (d / "out").iterdir() if ".mergebuild-tmp" in q.name]
    with Store(cache) as store:
        assert store.blobs.verify_all() == []
