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
from collections import Counter, deque
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
        self._held: Counter[int] = Counter()  # the sizes held now, for :meth:`largest_held`
        self._cv = threading.Condition()

    def _take(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)
        self._held[n] += 1

    def largest_held(self) -> int:
        """The largest single amount held now (0 when none)."""
        with self._cv:
            return max(self._held, default=0)

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
            self._held[n] -= 1
            if not self._held[n]:
                del self._held[n]
            self._cv.notify_all()


class LocalExecutor:
    """Thread pool with at most ``jobs`` items in flight and their bytes within ``budget``.

    Items start in order, except that while the next one waits for a job at least as large as
    itself to free its memory, later items that fit start meanwhile. Why: the budget keeps the
    two vocabulary-sized tensors (``embed_tokens``, ``lm_head``) apart, and in strict order the
    second one then held up every other slot while the first ran (6.8 s of a 23 s cold TIES build
    on 2 cores ran one job at a time). A head held up only by smaller jobs is waited for, so it
    is never starved.
    """

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

    LOOKAHEAD = 64  # most items drawn past a waiting head

    def _pick(self, ahead: deque, it: Iterator, ours_running: bool) -> ScheduledJob | None:
        """The item to start now (its bytes taken; the caller holds a slot), removed from
        ``ahead``, or None: wait for one of ours to finish."""
        head = ahead[0]
        if self.budget.try_acquire(head.peak_bytes):
            return ahead.popleft()
        if ours_running and self.budget.largest_held() >= head.peak_bytes:
            i = 1
            while i <= self.LOOKAHEAD:
                if i == len(ahead):
                    nxt = next(it, None)
                    if nxt is None:
                        break
                    ahead.append(nxt)
                if self.budget.try_acquire(ahead[i].peak_bytes):
                    item = ahead[i]
                    del ahead[i]
                    return item
                i += 1
        if ours_running:
            return None
        self.budget.acquire(head.peak_bytes)  # only other builds' jobs hold memory: wait for them
        return ahead.popleft()

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
        ahead: deque[ScheduledJob] = deque()  # drawn from ``items``, not started
        it = iter(items)
        with ThreadPoolExecutor(self.jobs, thread_name_prefix="mergebuild") as pool:

            def submit() -> bool:
                """Start one item; False when none is left or none may start before one of
                ours finishes."""
                if not ahead:
                    item = next(it, None)
                    if item is None:
                        return False
                    ahead.append(item)
                self._slots.acquire()
                try:
                    item = self._pick(ahead, it, bool(pending))
                except BaseException:
                    self._slots.release()
                    raise
                if item is None:
                    self._slots.release()
                    return False

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
                    while len(pending) < self.jobs and submit():
                        pass
            finally:
                for fut, item in pending.items():
                    if fut.cancel():  # never started: its slot and bytes are still held
                        self._drop(item)
