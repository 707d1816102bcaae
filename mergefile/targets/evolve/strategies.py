"""Scheduling candidates on Ray: ``pool``, ``buffered`` and ``serial`` (mergekit-evolve's three).

* ``pool``: one long-lived actor per worker slot (per GPU, or per CPU on a CPU-only machine)
  merges and evaluates on the same node; the only strategy with ``--in-memory``.
* ``buffered``: merges and evaluations as separate Ray tasks, keeping at most ``workers`` of
  each in flight, so a merge is always ready when an evaluation slot frees (one node, or a
  storage path on a fast shared filesystem).
* ``serial``: per candidate, a placement group (1 CPU, +1 GPU when GPUs are used, STRICT_PACK)
  holds its merge and then its evaluation on one node; Ray schedules the rest.

No task or actor asks for a GPU unless ``gpus > 0`` (``--num-gpus`` with CUDA available).
Ray is imported inside functions only; the session is started by the caller
(:func:`mergefile.run.ray_executor.ray_session`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from mergefile.errors import UserError
from mergefile.targets.evolve.worker import Job, Worker, WorkerSpec, merge_task, score_task

__all__ = ["STRATEGIES", "Strategy", "make_strategy"]

STRATEGIES = ("pool", "buffered", "serial")


class Strategy(Protocol):
    """Evaluates candidates; yields ``(job, result)`` as they complete."""

    def run(self, jobs: list[Job]) -> Iterator[tuple[Job, dict[str, Any]]]: ...

    def close(self) -> None: ...


def _ray():
    try:
        import ray
    except ImportError:
        raise UserError("evolve schedules candidates on Ray: pip install 'mergebuild[evolve]'") from None
    if not ray.is_initialized():
        raise UserError("Ray is not running (start it with mergefile.run.ray_executor.ray_session)")
    return ray


def default_workers(gpus: int) -> int:
    """One worker per GPU, or per CPU of the Ray cluster on a CPU-only run."""
    if gpus > 0:
        return gpus
    return max(1, int(_ray().cluster_resources().get("CPU", 1)))


def make_strategy(name: str, spec: WorkerSpec, workers: int, gpus: int) -> Strategy:
    """The strategy ``name`` over ``workers`` slots (``gpus`` GPUs in all, 0 on CPU)."""
    if name not in STRATEGIES:
        from mergefile.errors import unknown

        raise unknown("strategy", name, STRATEGIES)
    if spec.in_memory and name != "pool":
        raise UserError(f"--in-memory needs --strategy pool (the {name} strategy merges to disk)")
    cls = {"pool": PoolStrategy, "buffered": BufferedStrategy, "serial": SerialStrategy}[name]
    return cls(spec, workers, 1 if gpus > 0 else 0)


class PoolStrategy:
    """A fixed pool of Worker actors, each merging and scoring its own candidates."""

    def __init__(self, spec: WorkerSpec, workers: int, gpus_each: int):
        ray = _ray()
        actor = ray.remote(num_cpus=1, num_gpus=gpus_each)(Worker)
        self.actors = [actor.remote(spec, f"slot-{i}") for i in range(max(1, workers))]

    def run(self, jobs: list[Job]) -> Iterator[tuple[Job, dict[str, Any]]]:
        ray = _ray()
        queue, idle, pending = list(jobs), list(self.actors), {}
        while queue or pending:
            while queue and idle:
                a, job = idle.pop(0), queue.pop(0)
                pending[a.evaluate.remote(job)] = (job, a)
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                job, a = pending.pop(ref)
                idle.append(a)
                yield job, ray.get(ref)

    def close(self) -> None:
        ray = _ray()
        for a in self.actors:
            ray.kill(a)
        self.actors = []


class BufferedStrategy:
    """Separate merge and score tasks, at most ``workers`` of each in flight."""

    def __init__(self, spec: WorkerSpec, workers: int, gpus_each: int):
        ray = _ray()
        self.spec, self.workers = spec, max(1, workers)
        self.merge = ray.remote(num_cpus=1, num_gpus=gpus_each)(merge_task)
        self.score = ray.remote(num_cpus=1, num_gpus=gpus_each)(score_task)

    def run(self, jobs: list[Job]) -> Iterator[tuple[Job, dict[str, Any]]]:
        ray = _ray()
        queue = list(jobs)
        merging: dict[Any, Job] = {}
        merged: list[tuple[Job, Any]] = []
        scoring: dict[Any, Job] = {}
        while queue or merging or merged or scoring:
            while queue and len(merging) + len(merged) < self.workers:
                job = queue.pop(0)
                merging[self.merge.remote(self.spec, job)] = job
            while merged and len(scoring) < self.workers:
                job, ref = merged.pop(0)
                scoring[self.score.remote(self.spec, job, ref)] = job
            ready, _ = ray.wait(list(merging) + list(scoring), num_returns=1)
            for ref in ready:
                if ref in merging:
                    merged.append((merging.pop(ref), ref))
                else:
                    yield scoring.pop(ref), ray.get(ref)

    def close(self) -> None:
        pass


class SerialStrategy:
    """Per candidate, a placement group holding its merge and then its evaluation on one node."""

    def __init__(self, spec: WorkerSpec, workers: int, gpus_each: int):
        ray = _ray()
        self.spec, self.gpus_each = spec, gpus_each
        self.merge = ray.remote(num_cpus=1, num_gpus=gpus_each)(merge_task)
        self.score = ray.remote(num_cpus=1, num_gpus=gpus_each)(score_task)

    def run(self, jobs: list[Job]) -> Iterator[tuple[Job, dict[str, Any]]]:
        ray = _ray()
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        bundle = {"CPU": 1}
        if self.gpus_each:
            bundle["GPU"] = self.gpus_each
        pending: dict[Any, tuple[Job, Any]] = {}
        try:
            for job in jobs:
                pg = placement_group([bundle], strategy="STRICT_PACK")
                where = PlacementGroupSchedulingStrategy(placement_group=pg)
                merged = self.merge.options(scheduling_strategy=where).remote(self.spec, job)
                pending[self.score.options(scheduling_strategy=where).remote(self.spec, job, merged)] = (job, pg)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    job, pg = pending.pop(ref)
                    result = ray.get(ref)
                    remove_placement_group(pg)
                    yield job, result
        finally:
            for _, pg in pending.values():
                remove_placement_group(pg)

    def close(self) -> None:
        pass
