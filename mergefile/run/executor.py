"""Executors: run independent tensor work items under a memory budget.

One small protocol, two implementations: the local thread pool here (torch releases the GIL
inside kernels) and, later, Ray. A work item is a zero-argument callable plus its estimated
peak bytes; the executor yields results as they finish. Order of completion never matters:
every result is stored under its content key.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class WorkItem:
    name: str
    fn: Callable[[], Any]
    peak_bytes: int


class Executor(Protocol):
    def run(self, items: Iterable[WorkItem]) -> Iterator[tuple[WorkItem, Any]]: ...


class MemoryBudget:
    """A byte semaphore: a task waits until its estimate fits (one task always may run)."""

    def __init__(self, limit: int):
        self.limit = max(1, limit)
        self.used = 0
        self._cv = threading.Condition()

    def acquire(self, n: int) -> None:
        with self._cv:
            while self.used > 0 and self.used + n > self.limit:
                self._cv.wait()
            self.used += n

    def release(self, n: int) -> None:
        with self._cv:
            self.used -= n
            self._cv.notify_all()


class LocalExecutor:
    """Thread pool with at most ``jobs`` items in flight and their bytes within ``budget``."""

    def __init__(self, jobs: int = 1, memory_budget: int = 4 * 2**30):
        self.jobs = max(1, jobs)
        self.budget = MemoryBudget(memory_budget)

    def run(self, items: Iterable[WorkItem]) -> Iterator[tuple[WorkItem, Any]]:
        if self.jobs == 1:
            for item in items:
                yield item, item.fn()
            return
        pending: dict[Future, WorkItem] = {}
        it = iter(items)
        with ThreadPoolExecutor(self.jobs, thread_name_prefix="mergebuild") as pool:
            def submit() -> bool:
                item = next(it, None)
                if item is None:
                    return False
                self.budget.acquire(item.peak_bytes)

                def task(item=item):
                    try:
                        return item.fn()
                    finally:
                        self.budget.release(item.peak_bytes)

                pending[pool.submit(task)] = item
                return True

            while len(pending) < self.jobs and submit():
                pass
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        item = pending.pop(fut)
                        yield item, fut.result()
                        submit()
            finally:
                for fut in pending:
                    fut.cancel()
