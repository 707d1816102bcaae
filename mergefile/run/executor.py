"""Executors: run independent tensor jobs under a memory budget.

One small protocol, two implementations: the local thread pool here (torch releases the GIL
inside kernels) and Ray (``mergefile.run.ray_executor``). The unit of work is a job throughout:
a :class:`~mergefile.plan.jobs.TensorJob` is planned, handed to an executor as a
:class:`ScheduledJob` (a zero-argument callable for in-process execution, its estimated peak
bytes, and — for executors that ship work elsewhere — the same job as a
:class:`~mergefile.run.portable.PortableJob` that rebuilds what it needs from paths). The executor yields results as they finish. Order of completion never
matters: every result is stored under its content key.

``run`` may be called from several threads at once (independent targets building
concurrently): all calls share the executor's ``jobs`` slots and its one memory budget.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class ScheduledJob:
    """One planned job as an executor runs it.

    Args:
        name: what it makes (a tensor name), for progress and errors.
        fn: runs it in this process.
        peak_bytes: estimated bytes it holds at its peak (host, and device for ``--device cuda``).
        portable: the same job as a picklable zero-argument callable, for remote executors.
    """

    name: str
    fn: Callable[[], Any]
    peak_bytes: int
    portable: Callable[[], Any] | None = None


class Executor(Protocol):
    def run(self, items: Iterable[ScheduledJob]) -> Iterator[tuple[ScheduledJob, Any]]: ...


class MemoryBudget:
    """A byte semaphore: a task waits until its estimate fits (one task always may run).

    ``peak`` is the high-water mark of bytes held at once, for tests and reports.
    """

    def __init__(self, limit: int):
        self.limit = max(1, limit)
        self.used = 0
        self.peak = 0
        self._cv = threading.Condition()

    def _take(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)

    def acquire(self, n: int) -> None:
        with self._cv:
            while self.used > 0 and self.used + n > self.limit:
                self._cv.wait()
            self._take(n)

    def try_acquire(self, n: int) -> bool:
        """Take ``n`` bytes if they fit now; never waits."""
        with self._cv:
            if self.used > 0 and self.used + n > self.limit:
                return False
            self._take(n)
            return True

    def release(self, n: int) -> None:
        with self._cv:
            self.used -= n
            self._cv.notify_all()


class LocalExecutor:
    """Thread pool with at most ``jobs`` items in flight and their bytes within ``budget``."""

    def __init__(self, jobs: int = 1, memory_budget: int = 4 * 2**30):
        self.jobs = max(1, jobs)
        self.budget = MemoryBudget(memory_budget)
        self._slots = threading.BoundedSemaphore(self.jobs)  # shared by concurrent run() calls

    def _hold(self, item: ScheduledJob) -> None:
        self._slots.acquire()
        try:
            self.budget.acquire(item.peak_bytes)
        except BaseException:
            self._slots.release()
            raise

    def _drop(self, item: ScheduledJob) -> None:
        self.budget.release(item.peak_bytes)
        self._slots.release()

    def run(self, items: Iterable[ScheduledJob]) -> Iterator[tuple[ScheduledJob, Any]]:
        if self.jobs == 1:
            for item in items:
                self._hold(item)
                try:
                    result = item.fn()
                finally:
                    self._drop(item)
                yield item, result
            return
        pending: dict[Future, ScheduledJob] = {}
        it = iter(items)
        with ThreadPoolExecutor(self.jobs, thread_name_prefix="mergebuild") as pool:

            def submit() -> bool:
                item = next(it, None)
                if item is None:
                    return False
                self._hold(item)  # released by the task itself, so waiting here never deadlocks

                def task(item=item):
                    try:
                        return item.fn()
                    finally:
                        self._drop(item)

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
                for fut, item in pending.items():
                    if fut.cancel():  # never started: its slot and bytes are still held
                        self._drop(item)
