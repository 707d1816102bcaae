"""The Ray executor (issue 9): a local Ray (``ray.init(num_cpus=2)``), started once per module.

Outputs are bit-identical to the local executor for every registered method and for a target
that reads another target; workers read the shared cache (cached stages); a worker killed
mid-task is retried and the build completes; the budget holds across concurrent ``run`` calls.
"""

from __future__ import annotations

import dataclasses
import functools
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mergefile.methods import METHODS
from mergefile.run.build import BuildOptions, build
from mergefile.run.executor import ScheduledJob
from mergefile.store.store import Store
from mergefile.syntax import parse_mergefile
from tests.helpers import REPO, assert_same_tensors, cli, cli_json, mergefile_for, read_tensors
from tests.run.test_methods_e2e import RECIPES

ray = pytest.importorskip("ray")

from mergefile.run.ray_executor import RayExecutor  # noqa: E402  (after the skip)

STAGE2 = "out/stage2: task_arithmetic(base=out/ties) { a weight=0.5 }"  # reads another target


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _three(models) -> dict[str, Path]:
    return {k: models[k] for k in ("base", "a", "b")}


def _recipe() -> str:
    body = "\n".join(f"out/{m}: {r}" for m, r in RECIPES.items())
    return f"{body}\n{STAGE2}\nall: {' '.join(f'out/{m}' for m in RECIPES)} out/stage2"


@pytest.fixture(scope="module")
def both_builds(tiny_models, tmp_path_factory, local_ray) -> tuple[Path, Path]:
    """The same recipe built by the local executor and by Ray, each with its own cache."""
    root = tmp_path_factory.mktemp("ray")
    dirs = root / "local", root / "ray"
    for d in dirs:
        d.mkdir()
        mergefile_for(d, _three(tiny_models), _recipe())
    assert cli(dirs[0], "-j", "2", "all", cache=dirs[0] / "cache") == 0
    assert cli(dirs[1], "--executor", "ray", "-j", "2", "all", cache=dirs[1] / "cache") == 0
    return dirs


def test_every_method_has_a_recipe():
    assert set(RECIPES) == set(METHODS)


@pytest.mark.parametrize("name", sorted(RECIPES) + ["stage2"])
def test_ray_output_is_bit_identical_to_local(both_builds, name):
    local, remote = both_builds
    assert_same_tensors(read_tensors(local / "out" / name), read_tensors(remote / "out" / name))


def test_ray_build_is_then_up_to_date_and_workers_read_cached_stages(both_builds, capsys):
    local, remote = both_builds
    r = cli_json(remote, "--executor", "ray", "all", cache=remote / "cache", capsys=capsys)
    assert r["exit"] == 0 and all(t["up_to_date"] for t in r["targets"])
    # a weight edit reuses every sparsified delta: the workers read them from the shared cache
    for d in (local, remote):
        mf = d / "Mergefile"
        mf.write_text(mf.read_text().replace("ties(base=base) { a weight=0.7", "ties(base=base) { a weight=0.9"))
    assert cli(local, "out/ties", cache=local / "cache") == 0
    r = cli_json(remote, "--executor", "ray", "-j", "2", "out/ties", cache=remote / "cache", capsys=capsys)
    t = r["targets"][0]
    assert r["exit"] == 0 and t["built"] and t["stage_hits"] > 0 and t["stage_misses"] == 0, t
    assert_same_tensors(read_tensors(local / "out/ties"), read_tensors(remote / "out/ties"))


class _CrashFirstTask:
    """Wraps a Ray executor so that the first task to run kills its worker process."""

    remote = True

    def __init__(self, inner: RayExecutor, marker: Path):
        self.inner = inner
        self.marker = str(marker)

    def run(self, items):
        marker = self.marker

        def crash_once(task):  # nested: Ray pickles it by value
            import os

            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return task()
            os.close(fd)
            os._exit(1)  # the worker dies mid-task, as on a lost node

        return self.inner.run(dataclasses.replace(i, portable=functools.partial(crash_once, i.portable)) for i in items)


def test_killed_worker_task_is_retried_and_the_build_completes(tiny_models, tmp_path, local_ray):
    body = f"out/ties: {RECIPES['ties']}\n{STAGE2}\nall: out/ties out/stage2"
    local, remote = tmp_path / "local", tmp_path / "ray"
    for d in (local, remote):
        d.mkdir()
        mergefile_for(d, _three(tiny_models), body)
    assert cli(local, "all", cache=local / "cache") == 0
    marker = tmp_path / "crashed"
    options = BuildOptions(jobs=2, executor="ray", memory_budget=2**30)
    with Store(remote / "cache") as store:
        executor = _CrashFirstTask(RayExecutor(2, 2**30, max_retries=2), marker)
        report = build(parse_mergefile(remote / "Mergefile"), ["all"], store, options, executor=executor)
    assert marker.exists(), "no worker was killed"
    assert all(t.built for t in report.targets)
    for name in ("ties", "stage2"):
        assert_same_tensors(read_tensors(local / "out" / name), read_tensors(remote / "out" / name))


def test_a_failing_merge_is_not_retried(local_ray, tmp_path):
    calls = tmp_path / "calls"

    def boom():
        with open(calls, "a") as f:
            f.write("x")
        raise ValueError("bad merge")

    ex = RayExecutor(1, 2**20, max_retries=3)
    with pytest.raises(ValueError, match="bad merge"):
        list(ex.run([ScheduledJob("t", boom, 10, portable=boom)]))
    assert calls.read_text() == "x"
    assert ex.budget.used == 0


def test_budget_and_slots_hold_across_concurrent_runs(local_ray):
    def _sleepy(seconds: float, value: int) -> int:  # nested: Ray pickles it by value
        import time

        time.sleep(seconds)
        return value

    ex = RayExecutor(jobs=2, memory_budget=100)
    results: dict[int, list[int]] = {}

    def drive(t: int) -> None:
        items = [
            ScheduledJob(f"{t}-{i}", lambda: None, 40, portable=functools.partial(_sleepy, 0.05, i)) for i in range(4)
        ]
        results[t] = sorted(v for _, v in ex.run(items))

    threads = [threading.Thread(target=drive, args=(t,)) for t in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert results == {t: [0, 1, 2, 3] for t in range(3)}
    assert ex.budget.peak <= 80 and ex.budget.used == 0  # two 40-byte items fit in 100, three do not


def test_items_without_a_task_are_refused(local_ray):
    ex = RayExecutor(1, 2**20)
    with pytest.raises(TypeError, match="no portable form"):
        list(ex.run([ScheduledJob("t", lambda: 1, 10)]))
    assert ex.budget.used == 0


NOOP_WITHOUT_RAY = """
import sys
from mergefile.cli.main import run
code = run(sys.argv[1:])
assert code == 0, code
assert 'ray' not in sys.modules, 'a no-op build started Ray'
"""


def test_noop_rebuild_with_executor_ray_does_not_start_ray(tiny_models, tmp_path):
    mergefile_for(tmp_path, tiny_models, "out/x: linear { a weight=1 ; b weight=2 }")
    assert cli(tmp_path, cache=tmp_path / "cache") == 0
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            NOOP_WITHOUT_RAY,
            "-C",
            str(tmp_path),
            "--quiet",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--executor",
            "ray",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "up to date" in r.stdout
