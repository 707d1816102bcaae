"""The work of one candidate in a worker process: build it (or load it in memory), then score it.

The same :class:`Worker` runs as a Ray actor (``pool``) or behind the Ray tasks of ``buffered``
and ``serial`` (:func:`merge_task`, :func:`score_task`). Each worker opens the shared cache
itself (diskcache is safe across processes on one filesystem) and keeps its lm-eval tasks, and
with ``--in-memory`` one resident model, for its whole life. The driver alone writes the score
cache and the history.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergefile.errors import UserError
from mergefile.syntax.ast import Target
from mergefile.targets.evolve.config import EvolveConfig
from mergefile.targets.evolve.scoring import ScoreSpec

__all__ = ["Job", "Worker", "WorkerSpec", "merge_task", "score_task"]


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, shipped once (frozen, picklable)."""

    config: EvolveConfig
    score: ScoreSpec
    cache_dir: str
    cache_size: int
    storage: str
    in_memory: bool = False
    allow_pickle: bool = False
    allow_crimes: bool = False
    token: str = ""  # identifies the search, for the per-process worker memo of Ray tasks
    merge_device: str | None = None  # where candidates are merged (--merge-cuda); None: score.device

    @property
    def merge_on(self) -> str:
        return self.merge_device or self.score.device


@dataclass(frozen=True)
class Job:
    """One candidate to evaluate: its recipe and content key."""

    n: int
    target: Target
    key: str


class Worker:
    """Builds and scores candidates; lives as long as its process (or actor)."""

    def __init__(self, spec: WorkerSpec, slot: str = "slot-0"):
        from mergefile.targets.evolve.scoring import Scorer

        self.spec = spec
        self.slot = slot
        self.scorer = Scorer(spec.score)
        self._store = None
        self._resident = None

    @property
    def store(self):
        if self._store is None:
            from mergefile.store.store import Store

            self._store = Store(self.spec.cache_dir, self.spec.cache_size)
        return self._store

    def _options(self):
        from mergefile.targets.evolve.candidates import build_options

        return build_options(
            self.spec.merge_on, self.spec.allow_pickle, self.spec.allow_crimes, in_memory=self.spec.in_memory
        )

    def folder(self, name: str) -> Path:
        return Path(self.spec.storage) / "candidates" / name

    # -- the steps --------------------------------------------------------------------------
    def merge(self, job: Job, name: str) -> str:
        """Build the candidate into ``candidates/NAME`` (incremental over what is there)."""
        from mergefile.targets.evolve.candidates import build_candidate

        return str(build_candidate(self.spec.config, job.target, self.folder(name), self.store, self._options()))

    def score_folder(self, folder: str) -> dict[str, dict[str, float]]:
        return self.scorer.score_folder(folder)

    def evaluate(self, job: Job) -> dict[str, Any]:
        """Merge and score one candidate (the ``pool`` strategy's unit of work)."""
        t0 = time.perf_counter()
        try:
            if self.spec.in_memory:
                self._load_in_memory(job)
                t1 = time.perf_counter()
                results = self._resident.score()
            else:
                folder = self.merge(job, self.slot)
                t1 = time.perf_counter()
                results = self.score_folder(folder)
        except UserError as e:
            return {"error": e.render(), "pid": os.getpid()}
        t2 = time.perf_counter()
        return {"results": results, "merge_seconds": t1 - t0, "eval_seconds": t2 - t1, "pid": os.getpid()}

    def _load_in_memory(self, job: Job) -> None:
        from mergefile.io.header import TORCH_DTYPES
        from mergefile.targets.evolve.candidates import candidate_tensors, plan_candidate
        from mergefile.targets.evolve.scoring import Resident

        options = self._options()
        if self._resident is None:
            pc = plan_candidate(self.spec.config, job.target, self.store, options)
            dtype = TORCH_DTYPES[pc.plan.jobs[0].result_dtype]
            self._resident = Resident(self.scorer, pc.plan.donor.path, dtype, self.spec.score.device)
        self._resident.load(candidate_tensors(self.spec.config, job.target, self.store, options))

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


# ---- Ray task bodies (buffered, serial): one Worker per process and search ---------------------

_WORKERS: dict[str, Worker] = {}


def _worker(spec: WorkerSpec) -> Worker:
    w = _WORKERS.get(spec.token)
    if w is None:
        w = _WORKERS[spec.token] = Worker(spec)
    return w


def merge_task(spec: WorkerSpec, job: Job) -> dict[str, Any]:
    """Build one candidate into its own folder ``candidates/<key>``."""
    t0 = time.perf_counter()
    try:
        folder = _worker(spec).merge(job, job.key[:16])
    except UserError as e:
        return {"error": e.render(), "pid": os.getpid()}
    return {"folder": folder, "merge_seconds": time.perf_counter() - t0}


def score_task(spec: WorkerSpec, job: Job, merged: dict[str, Any]) -> dict[str, Any]:
    """Score a folder ``merge_task`` built, then delete it (as mergekit-evolve does)."""
    if "error" in merged:
        return merged
    t0 = time.perf_counter()
    try:
        results = _worker(spec).score_folder(merged["folder"])
    except UserError as e:
        return {"error": e.render(), "pid": os.getpid()}
    finally:
        from mergefile.store.lock import lock_path

        shutil.rmtree(merged["folder"], ignore_errors=True)
        Path(lock_path(merged["folder"])).unlink(missing_ok=True)
    return {
        "results": results,
        "merge_seconds": merged["merge_seconds"],
        "eval_seconds": time.perf_counter() - t0,
        "pid": os.getpid(),
    }
