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
