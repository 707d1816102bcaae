"""Candidates through the ordinary pipeline: plan, key, build to a folder, or materialize in memory.

A candidate is a one-target Mergefile (the search's model declarations + the candidate target),
planned by :func:`mergefile.run.build.plan_build` and built by :func:`mergefile.run.build.build`,
so every tensor it shares with an earlier candidate (or any other build) is a blob-cache hit.

Its *content key* is the key of everything that decides what an evaluation sees: every output
tensor's key (``run/plan_keys.key_plan``), the output ``config.json`` and the tokenizer/generation
files copied from the donor. Two genotypes that map to the same weights (``|x|``, clamping,
rounding) have the same key, so they are evaluated once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mergefile.store.keys import key_of
from mergefile.syntax.ast import Target
from mergefile.targets.evolve.config import EvolveConfig

__all__ = ["PlannedCandidate", "build_candidate", "candidate_tensors", "plan_candidate"]

_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


@dataclass
class PlannedCandidate:
    """A candidate target, its plan and keys (no tensor data read yet)."""

    target: Target
    plan: Any  # TargetPlan
    kp: Any  # KeyedPlan
    key: str


def _file_digest(path: str) -> str:
    import os

    import xxhash

    st = os.stat(path)
    k = (path, st.st_size, st.st_mtime_ns)
    if k not in _FILE_DIGESTS:
        _FILE_DIGESTS[k] = xxhash.xxh3_128_hexdigest(Path(path).read_bytes())
    return _FILE_DIGESTS[k]


def build_options(device: str = "cpu", allow_pickle: bool = False, allow_crimes: bool = False, in_memory: bool = False):
    """Options of a candidate build: one job, on ``device``.

    On a GPU the inputs are read straight to it (as mergekit-evolve's ``--merge-cuda`` reads to
    the GPU) unless the merged tensors go to a resident model in memory, which they reach from
    the blob cache anyway.
    """
    from mergefile.run.build import BuildOptions

    return BuildOptions(
        jobs=1,
        device=device,
        allow_pickle=allow_pickle,
        allow_crimes=allow_crimes,
        read_to_device=device.startswith("cuda") and not in_memory,
    )


def plan_candidate(config: EvolveConfig, target: Target, store, options) -> PlannedCandidate:
    """Plan and key ``target`` in the search's Mergefile. Reads headers and the stat-cache only."""
    from mergefile.run.build import plan_build

    planned = plan_build(config.mergefile(target), [target.name], store, options)
    plan, kp, _, aux = planned[-1]
    files = {name: _file_digest(path) for name, path in sorted(aux.copies.items())}
    key = key_of("evolve-candidate", {"tensors": dict(kp.keys), "config": aux.config, "files": files})
    return PlannedCandidate(target, plan, kp, key)


def build_candidate(config: EvolveConfig, target: Target, out_dir: str | Path, store, options) -> Path:
    """Build the candidate into ``out_dir`` (incrementally: unchanged shards are kept)."""
    from mergefile.run.build import build

    t = replace(target, name=str(Path(out_dir).resolve()))
    build(config.mergefile(t), [t.name], store, options)
    return Path(t.name)


def candidate_tensors(config: EvolveConfig, target: Target, store, options) -> Iterator[tuple[str, Any]]:
    """Every output tensor of the candidate, from the blob cache (computed there when missing).

    Nothing is written to an output folder: this is what ``--in-memory`` copies into the
    resident model. Tensors come one at a time (each is a zero-copy view of its blob).
    """
    from mergefile.io.reader import TensorReader
    from mergefile.run.compute import InputLoader, compute_job

    pc = plan_candidate(config, target, store, options)
    reader = TensorReader()
    try:
        loader = InputLoader(pc.plan, reader, store.blobs, options.allow_pickle)
        for job in pc.plan.jobs:
            t = store.blobs.get(pc.kp.keys[job.name])
            if t is None:
                t, _ = compute_job(job, pc.kp, loader, store.blobs, options.device)
            yield job.name, t
    finally:
        reader.close()
