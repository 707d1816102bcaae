"""What of a computed tensor the cache keeps: its stages' compact forms, and the result itself.

Why a policy: a staged method's result (TIES, DARE, ...) is cheap to make again once its masks
are cached — the torch-free kernels re-apply them to the inputs in one pass — while caching it
writes the output's bytes a second time on every cold build and every edit. docs/cache.md,
"What the cache keeps", gives the figures; ``MERGEBUILD_STAGE_CACHE`` and
``MERGEBUILD_RESULT_CACHE`` override the defaults.
"""

from __future__ import annotations

import os

from mergefile.io.header import TensorInfo, dtype_code
from mergefile.methods.apply import has_stages
from mergefile.methods.base import Method
from mergefile.methods.registry import get_method
from mergefile.plan.jobs import TargetPlan, TensorJob
from mergefile.run.plan_keys import KeyedPlan, stage_inputs, stage_plan

BF16 = "BF16"

# A job's compact stage forms (packed keep-masks) are kept only while they add at most this
# share of the output tensor's bytes: with bf16 outputs that is up to 4 sparsified models per
# tensor, 9 with float32 ones.
STAGE_SHARE = 0.3


def keep_stages(method: Method, tensors, b: int, n_staged: int) -> bool:
    """Whether this job's compact stage forms go to the cache (``MERGEBUILD_STAGE_CACHE``:
    auto, always, never)."""
    mode = os.environ.get("MERGEBUILD_STAGE_CACHE", "auto")
    if mode in ("always", "never"):
        return mode == "always"
    if method.stage is None or method.stage.split is None:
        return True  # a dense stage output (e.g. LoRA's SVD factors) is always worth its bytes
    out = tensors[b]
    return n_staged * (out.numel() + 7) // 8 <= STAGE_SHARE * out.numel() * out.element_size()


def bits_inputs(job: TensorJob, plan: TargetPlan) -> list[TensorInfo] | None:
    """The job's inputs when the torch-free path can take them: model-file tensors, all bf16 and
    of one shape, computed and written in bf16, no vocabulary remap. None otherwise."""
    if get_method(job.method).bits is None or job.vocab is not None or job.result_dtype != BF16:
        return None
    if job.dtype and dtype_code(job.dtype) != BF16:
        return None
    infos = []
    for ref in job.inputs:
        model = plan.inputs[ref.model]
        if model.source is not None or model.target is not None:
            return None
        info = model.tensors[ref.tensor]
        if info.dtype != BF16 or info.begin % 2:
            return None
        infos.append(info)
    if not infos or len({tuple(i.shape) for i in infos}) != 1:
        return None
    return infos


def stage_keys(method: Method, job: TensorJob, kp: KeyedPlan) -> list[tuple[int, str]]:
    """(input index, stage key) of each stage the job runs; empty for a method without stages."""
    if not has_stages(method, len(job.inputs), job.base_index):
        return []
    return [(i, sk) for i, _, sk in stage_plan(method, job, stage_inputs(job, kp))]


def keep_result(job: TensorJob, kp: KeyedPlan, blobs) -> bool:
    """Whether the job's result goes to the cache (``MERGEBUILD_RESULT_CACHE``: auto, always).

    Not by default when it can be made again from the cache's masks without torch: a staged
    method whose every stage's compact form is cached, over bf16 model files. A rebuild that needs
    it then reads the inputs and the masks instead of the result (``run/compute_bits.py``); one
    whose output folder holds it copies it from there (``run/stale.py::in_previous_output``).
    Everything else keeps it: a method without stages (recomputing means reading every input
    again), other dtypes, upstream targets' and LoRA inputs, and jobs of remote executors (their
    results travel to the driver through the cache).
    """
    if os.environ.get("MERGEBUILD_RESULT_CACHE", "auto") == "always" or kp.plan is None:
        return True
    if bits_inputs(job, kp.plan) is None:
        return True
    keys = stage_keys(get_method(job.method), job, kp)
    return not keys or not all(sk in blobs for _, sk in keys)
