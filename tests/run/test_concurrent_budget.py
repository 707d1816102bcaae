"""The local executor's budget for a build keeps the largest jobs apart (``concurrent_budget``).

At ``-j 2`` a quarter of RAM would let the two vocabulary-sized tensors merge at once, which sets
a cold build's peak memory; the cap lets a large job run beside typical ones, never beside
another large one, and leaves equal-sized jobs ``jobs`` at a time.
"""

from __future__ import annotations

import threading
import time

from mergefile.run.build import concurrent_budget
from mergefile.run.executor import LocalExecutor, ScheduledJob


def test_the_cap_is_the_largest_job_plus_typical_ones_within_the_budget():
    assert concurrent_budget([100, 100, 10, 10, 10], jobs=2, budget=10**9) == 110
    assert concurrent_budget([10] * 8, jobs=4, budget=10**9) == 40  # equal jobs: all four at once
    assert concurrent_budget([100, 10, 10], jobs=2, budget=50) == 50  # never above the budget
    assert concurrent_budget([100, 100], jobs=1, budget=10**9) == 10**9
    assert concurrent_budget([], jobs=2, budget=7) == 7


def test_two_large_jobs_never_run_at_once_while_small_ones_do():
    sizes = [100, 10, 10, 100, 10, 10, 10, 10]
    running: dict[str, int] = {}
    lock = threading.Lock()
    seen: list[tuple[str, ...]] = []

    def work(name: str, size: int):
        def fn():
            with lock:
                running[name] = size
                seen.append(tuple(sorted(running)))
            time.sleep(0.02)
            with lock:
                del running[name]
            return name

        return fn

    items = [ScheduledJob(f"t{i}", work(f"t{i}", s), s) for i, s in enumerate(sizes)]
    ex = LocalExecutor(2, concurrent_budget(sizes, 2, 10**9))
    assert sorted(name for _, name in ex.run(items)) == sorted(i.name for i in items)
    large = {"t0", "t3"}
    assert not any(large <= set(s) for s in seen)  # the two large ones never together
    assert any(len(s) == 2 for s in seen)  # but two jobs did run at once


def _recorder(durations: dict[str, float]):
    """Jobs that log their start order and the set running at each start."""
    lock = threading.Lock()
    running: set[str] = set()
    starts: list[str] = []
    seen: list[frozenset[str]] = []

    def work(name: str):
        def fn():
            with lock:
                running.add(name)
                starts.append(name)
                seen.append(frozenset(running))
            time.sleep(durations.get(name, 0.01))
            with lock:
                running.discard(name)
            return name

        return fn

    return work, starts, seen


def test_small_jobs_run_beside_a_large_one_while_the_next_large_one_waits():
    # embed_tokens, lm_head, then the layers: in strict order lm_head would hold up the other
    # slot for as long as embed_tokens runs
    sizes = {"embed": 100, "lm_head": 100, **{f"l{i}": 10 for i in range(6)}}
    work, starts, seen = _recorder({"embed": 0.3})
    items = [ScheduledJob(n, work(n), s) for n, s in sizes.items()]
    ex = LocalExecutor(2, concurrent_budget(list(sizes.values()), 2, 10**9))
    assert sorted(name for _, name in ex.run(items)) == sorted(sizes)
    assert not any({"embed", "lm_head"} <= s for s in seen)
    assert starts.index("l0") < starts.index("lm_head")  # a layer ran beside embed
    assert ex.budget.used == 0 and ex.budget.largest_held() == 0


def test_a_large_job_held_up_by_small_ones_is_not_starved():
    # the head waits only for small jobs: later small ones must not keep overtaking it
    sizes = {"s0": 10, "big": 100, **{f"s{i}": 10 for i in range(1, 8)}}
    work, starts, _ = _recorder({"s0": 0.2})
    items = [ScheduledJob(n, work(n), s) for n, s in sizes.items()]
    ex = LocalExecutor(2, 105)
    assert sorted(name for _, name in ex.run(items)) == sorted(sizes)
    assert starts[:3] == ["s0", "big", "s1"]
