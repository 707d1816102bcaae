"""Parallel targets (issue 9): independent targets build side by side under one memory budget.

Outputs are bit-identical to a sequential build; the shared budget's high-water mark stays
within the limit; a target starts only after the targets it reads are published; a failing
target stops the others and its dependents never start.
"""

from __future__ import annotations

import threading
import time

import pytest

import mergefile.run.build as build_mod
from mergefile.run.build import BuildOptions, build, plan_build
from mergefile.run.executor import LocalExecutor, ScheduledJob
from mergefile.run.portable import job_peak_bytes
from mergefile.run.schedule import run_targets
from mergefile.store.store import Store
from mergefile.syntax import parse_mergefile
from tests.helpers import assert_same_tensors, cli, mergefile_for, read_tensors

RECIPE = """
out/lin: linear { a weight=1 ; b weight=2 }
out/ties: ties(base=base) { a weight=0.7 density=0.5 ; b weight=0.5 density=0.4 }
out/dare: dare_ties(base=base) { a weight=0.7 density=0.5 ; c weight=0.5 density=0.4 }
out/slerp: slerp(base=base, t=0.3) { c }
out/stage2: task_arithmetic(base=out/ties) { out/lin weight=0.5 ; c weight=0.25 }
out/stage3: linear { out/stage2 weight=1 ; out/dare weight=1 }
all: out/lin out/ties out/dare out/slerp out/stage2 out/stage3
"""
TARGETS = ["lin", "ties", "dare", "slerp", "stage2", "stage3"]
NEEDS = {"stage2": {"ties", "lin"}, "stage3": {"stage2", "dare", "ties", "lin"}}


def test_parallel_targets_match_sequential_within_the_budget(tiny_models, tmp_path, monkeypatch):
    seq, par = tmp_path / "seq", tmp_path / "par"
    for d in (seq, par):
        d.mkdir()
        mergefile_for(d, tiny_models, RECIPE)
    assert cli(seq, "-j", "1", "all", cache=seq / "cache") == 0

    mf = parse_mergefile(par / "Mergefile")
    options = BuildOptions(jobs=4)
    with Store(par / "cache") as store:
        planned = plan_build(mf, ["all"], store, options)
        peaks = [job_peak_bytes(j, kp.plan) for _, kp, _, _ in planned for j in kp.plan.jobs]
    limit = 3 * max(peaks)  # room for a few items, far from all 4 slots of the biggest ones

    lock = threading.Lock()
    computing: dict[str, list[tuple[float, float]]] = {}
    published: dict[str, float] = {}
    real_compute, real_finish = build_mod.compute_job, build_mod.OutputWriter.finish

    def compute(job, kp, *a, **k):
        t0 = time.perf_counter()
        time.sleep(0.002)  # long enough for targets to overlap on a busy machine
        out = real_compute(job, kp, *a, **k)
        with lock:
            computing.setdefault(kp.plan.name.removeprefix("out/"), []).append((t0, time.perf_counter()))
        return out

    def finish(writer):
        n = real_finish(writer)
        with lock:
            published[writer.plan.name.removeprefix("out/")] = time.perf_counter()
        return n

    monkeypatch.setattr(build_mod, "compute_job", compute)
    monkeypatch.setattr(build_mod.OutputWriter, "finish", finish)
    executor = LocalExecutor(4, limit)
    with Store(par / "cache") as store:
        report = build(mf, ["all"], store, BuildOptions(jobs=4, memory_budget=limit), executor=executor)
    assert all(t.built for t in report.targets)
    assert [t.name for t in report.targets] == [f"out/{n}" for n in TARGETS]  # reports stay in build order

    for name in TARGETS:
        assert_same_tensors(read_tensors(seq / "out" / name), read_tensors(par / "out" / name))
    assert executor.budget.used == 0
    assert max(peaks) < executor.budget.peak <= limit  # items ran side by side, never beyond the budget
    # independent targets overlapped in time ...
    spans = {n: (min(s for s, _ in v), max(e for _, e in v)) for n, v in computing.items()}
    first = ["lin", "ties", "dare", "slerp"]
    assert any(spans[x][0] < spans[y][1] and spans[y][0] < spans[x][1] for x in first for y in first if x < y), spans
    # ... and a target computed nothing before the targets it reads were published
    for name, needs in NEEDS.items():
        assert spans[name][0] > max(published[n] for n in needs), name


def test_cli_parallel_build_is_then_up_to_date(tiny_models, tmp_path, capsys):
    mergefile_for(tmp_path, tiny_models, RECIPE)
    assert cli(tmp_path, "-j", "3", "--memory-budget", "64K", "all", cache=tmp_path / "cache") == 0
    capsys.readouterr()
    assert cli(tmp_path, "-j", "3", "all", cache=tmp_path / "cache") == 0
    assert capsys.readouterr().out.count("is up to date") == len(TARGETS)


# -- the scheduler alone ---------------------------------------------------------------------


def test_scheduler_orders_prerequisites_and_limits_parallelism():
    lock = threading.Lock()
    log: list[tuple[str, str]] = []
    running = [0, 0]  # now, max

    def one(name, stop):
        with lock:
            log.append(("start", name))
            running[0] += 1
            running[1] = max(running[1], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
            log.append(("end", name))

    deps = {"c": {"a"}, "d": {"a", "b"}, "e": {"d"}}
    run_targets(["a", "b", "f", "c", "d", "e"], deps, one, parallel=2)
    pos = {ev: i for i, ev in enumerate(log)}
    for name, needs in deps.items():
        assert all(pos[("end", n)] < pos[("start", name)] for n in needs), log
    assert running[1] == 2
    assert sorted(n for ev, n in log if ev == "start") == ["a", "b", "c", "d", "e", "f"]


def test_scheduler_stops_on_failure_and_skips_dependents():
    started: list[str] = []
    lock = threading.Lock()

    def one(name, stop):
        with lock:
            started.append(name)
        if name == "bad":
            raise RuntimeError("boom")
        while name == "slow" and not stop.is_set():
            time.sleep(0.005)

    with pytest.raises(RuntimeError, match="boom"):
        run_targets(["slow", "bad", "after"], {"after": {"bad"}}, one, parallel=2)
    assert "after" not in started


def test_local_executor_shares_slots_and_budget_across_concurrent_runs():
    ex = LocalExecutor(jobs=3, memory_budget=100)
    lock = threading.Lock()
    now = [0, 0]

    def work():
        with lock:
            now[0] += 1
            now[1] = max(now[1], now[0])
        time.sleep(0.01)
        with lock:
            now[0] -= 1
        return 1

    def drive():
        assert sum(r for _, r in ex.run([ScheduledJob("t", work, 30) for _ in range(6)])) == 6

    threads = [threading.Thread(target=drive) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert now[1] <= 3 and ex.budget.peak <= 90 and ex.budget.used == 0
