"""Compute one output tensor from bf16 bits, without torch, where a method offers it.

Why: importing torch costs ~2.4 s of CPU on the 2-core bench machine, and the build's first
tensor waits for it. A weight edit of a TIES or DARE recipe, whose stage masks are all in the
cache, is kernels over bytes (``Method.bits``: numba over numpy views of the files' mappings),
so it need not import torch at all; nor does a task_arithmetic build, which has no stage. The
result is the same bits as :func:`run.compute.compute_job` gives (the kernels are the ones the
torch path calls), so keys, manifests and cache entries do not change.

Anything else — another dtype, a vocabulary remap, an upstream target or LoRA input, a stage not
in the cache, a value that is not finite — goes to ``compute_job`` (``None`` here).
"""

from __future__ import annotations

import time
from typing import Any

from mergefile.io.writer import RawTensor
from mergefile.methods.apply import has_stages
from mergefile.methods.base import MergeContext
from mergefile.methods.registry import get_method
from mergefile.plan.jobs import TensorJob
from mergefile.run.cache_policy import BF16, bits_inputs, keep_result, stage_keys
from mergefile.run.compute import JobResult
from mergefile.run.plan_keys import KeyedPlan


def takes_bits(job: TensorJob, kp: KeyedPlan, blobs, device: str) -> bool:
    """Whether :func:`compute_bits` will take this job (short of a non-finite value), from the
    plan and the cache's index only: a build none of whose jobs need torch does not import it.
    With deferred keys (a cold build) only a method without stages can."""
    if device != "cpu" or bits_inputs(job, kp.plan) is None:
        return False
    method = get_method(job.method)
    if kp.deferred is not None:
        return not has_stages(method, len(job.inputs), job.base_index)
    return all(sk in blobs for _, sk in stage_keys(method, job, kp))


def compute_bits(
    job: TensorJob, kp: KeyedPlan, loader, blobs, device: str = "cpu"
) -> tuple[RawTensor, JobResult] | None:
    """Merge one tensor from bits and store it; None when it needs the torch steps.

    ``loader`` is the build's :class:`run.compute.InputLoader` (its reader's mappings are read).
    """
    if device != "cpu":
        return None
    infos = bits_inputs(job, kp.plan)
    if infos is None:
        return None
    import numpy as np

    t0 = time.perf_counter()
    method = get_method(job.method)
    compact: dict[int, Any] = {}
    for i, sk in stage_keys(method, job, kp):
        packed = blobs.get_raw(sk)
        if packed is None or packed.code != "U8":
            return None
        compact[i] = np.frombuffer(packed.data, dtype=np.uint8)
    arrays = [np.frombuffer(loader.reader.get_raw(info), dtype=np.uint16) for info in infos]
    ctx = MergeContext(job.name, job.is_embed, job.base_index, None)
    bits = method.bits(arrays, compact, [dict(p) for p in job.per_model], dict(job.params), ctx)
    del arrays
    loader.release(job.inputs)
    if bits is None:
        return None
    key = kp.keys[job.name]
    raw = RawTensor(BF16, tuple(infos[0].shape), memoryview(bits).cast("B"))
    res = JobResult(job.name, key, "computed", 0.0, sum(i.nbytes for i in infos), 0, stage_hits=len(compact))
    if keep_result(job, kp, blobs):
        res.bytes_written += blobs.put_raw(key, raw)
    res.seconds = time.perf_counter() - t0
    return raw, res
