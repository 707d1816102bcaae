"""The Ray executor: scheduled jobs as Ray tasks, on a local Ray or an existing cluster.

Same protocol as :class:`~mergefile.run.executor.LocalExecutor`; only this module imports
``ray`` (inside functions, so importing it costs nothing). Each item's serializable
:class:`~mergefile.run.portable.PortableJob` runs on a worker, which reads its inputs from shared
storage (or its own hub cache) and sends the tensor back through the object store; the driver
stores it and writes the output. Tasks carry resource hints (``memory`` from the item's peak
estimate, ``num_gpus`` only for ``--device cuda``) and are retried when a worker dies
(``max_retries``); an exception raised by the merge itself is not retried.

Ray is started (or joined) in one place, :func:`ray_session`, which the CLI calls.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from mergefile.errors import UserError
from mergefile.run.executor import MemoryBudget, ScheduledJob

__all__ = ["RayExecutor", "ray_session"]


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'mergebuild[ray]'") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Join the Ray cluster at ``address`` (``auto``, ``ray://host:10001``, ``host:6379``), or
    start a local Ray with ``num_cpus`` CPUs; shut down on exit what this call started.

    Already initialized (a test fixture, a notebook): used as it is.
    """
    ray = _import_ray()
    if ray.is_initialized():
        yield
        return
    common = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **common)
    else:
        ray.init(address="local", num_cpus=num_cpus, **common)  # a new local Ray, never a stray one
    try:
        yield
    finally:
        ray.shutdown()


def _call(task: Any) -> Any:
    """The Ray task: run one portable job on a worker."""
    return task()


class RayExecutor:
    """Runs scheduled jobs, as portable jobs, on the connected Ray cluster.

    At most ``jobs`` tasks are in flight and their peak estimates stay within
    ``memory_budget`` (shared by concurrent ``run`` calls, like the local executor), so the
    driver never holds more results than the budget allows.

    Args:
        jobs: tasks in flight (``-j``): size it to the cluster's CPUs (or GPUs).
        memory_budget: bytes of work in flight across the cluster.
        device: ``cpu`` or ``cuda``; with ``cuda`` each task asks for ``gpus_per_task`` GPUs.
        max_retries: re-runs of a task whose worker died (node lost, killed, OOM).
        gpus_per_task: GPU share per task (default ``1 / jobs``, capped at 1).

    Raises:
        UserError: Ray is not initialized, or ``cuda`` is asked of a cluster without GPUs.
    """

    remote = True  # scheduled jobs must carry their portable job

    def __init__(
        self,
        jobs: int = 1,
        memory_budget: int = 4 * 2**30,
        device: str = "cpu",
        max_retries: int = 3,
        gpus_per_task: float | None = None,
    ):
        ray = _import_ray()
        if not ray.is_initialized():
            raise UserError(
                "Ray is not initialized: call ray.init() or use ray_session() first "
                "(the mergebuild CLI does it for --executor ray)"
            )
        self.jobs = max(1, jobs)
        self.budget = MemoryBudget(memory_budget)
        self.max_retries = max_retries
        self._slots = threading.BoundedSemaphore(self.jobs)
        self._fn = ray.remote(_call)
        self._gpus = 0.0
        if device.startswith("cuda"):
            if ray.cluster_resources().get("GPU", 0) <= 0:
                raise UserError(f"--device {device} with --executor ray, but the Ray cluster has no GPUs")
            self._gpus = min(1.0, gpus_per_task if gpus_per_task else 1.0 / self.jobs)
        # A memory request above every node's memory would never be scheduled: cap it.
        self._max_memory = int(max((n["Resources"].get("memory", 0) for n in ray.nodes() if n.get("Alive")), default=0))

    def _options(self, item: ScheduledJob) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_cpus": 1, "max_retries": self.max_retries, "retry_exceptions": False}
        if self._max_memory:
            opts["memory"] = max(1, min(item.peak_bytes, self._max_memory))
        if self._gpus:
            opts["num_gpus"] = self._gpus
        return opts

    def _hold(self, item: ScheduledJob, block: bool) -> bool:
        """Take a slot and the item's bytes; without ``block``, only if both are free now."""
        if not self._slots.acquire(blocking=block):
            return False
        if block:
            self.budget.acquire(item.peak_bytes)
        elif not self.budget.try_acquire(item.peak_bytes):
            self._slots.release()
            return False
        return True

    def _drop(self, item: ScheduledJob) -> None:
        self.budget.release(item.peak_bytes)
        self._slots.release()

    def run(self, items: Iterable[ScheduledJob]) -> Iterator[tuple[ScheduledJob, Any]]:
        import ray

        it = iter(items)
        nxt = next(it, None)
        pending: dict[Any, ScheduledJob] = {}
        try:
            while nxt is not None or pending:
                # Block for room only while holding nothing: what this call holds is released
                # only by this loop, so waiting for it here would never end.
                while nxt is not None and self._hold(nxt, block=not pending):
                    if nxt.portable is None:
                        self._drop(nxt)
                        raise TypeError(f"job '{nxt.name}' has no portable form for Ray")
                    pending[self._fn.options(**self._options(nxt)).remote(nxt.portable)] = nxt
                    nxt = next(it, None)
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=None if nxt is None else 0.2)
                for ref in ready:
                    item = pending.pop(ref)
                    try:
                        yield item, ray.get(ref)  # its bytes count until the caller has stored it
                    finally:
                        self._drop(item)
        finally:
            for ref, item in pending.items():
                ray.cancel(ref)
                self._drop(item)
