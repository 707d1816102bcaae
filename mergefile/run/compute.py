"""Compute one output tensor: load inputs, align shapes, run cached stages, merge, cast.

The IO around the one way to run a method (``methods.apply.run_method``): the only place a
build's tensors meet methods. Results go to the blob store under their key, so
an interrupted build resumes from whatever finished, and a repeated key is never recomputed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from mergefile._lazy import torch
from mergefile.methods.apply import has_stages, run_method
from mergefile.methods.base import EmbedPolicy, MergeContext, Method
from mergefile.methods.registry import get_method
from mergefile.plan.jobs import InputRef, TargetPlan, TensorJob
from mergefile.run.cache_policy import keep_result, keep_stages
from mergefile.run.plan_keys import KeyedPlan, stage_inputs, stage_plan
from mergefile.store.keys import seed_from_key


@dataclass
class JobResult:
    name: str
    key: str
    status: str  # "computed" | "hit"
    seconds: float
    bytes_read: int
    bytes_written: int
    stage_hits: int = 0
    stage_misses: int = 0
    tensor: Any = field(default=None, repr=False, compare=False)  # the result, for the output writer


class InputLoader:
    """Reads input tensors for one plan: model files by mmap, upstream targets from the cache."""

    def __init__(self, plan: TargetPlan, reader, blobs, allow_pickle: bool = False):
        self.plan = plan
        self.reader = reader
        self.blobs = blobs
        self._outputs: dict[int, Any] = {}
        self.allow_pickle = allow_pickle

    def load(self, ref: InputRef, key: str) -> tuple[torch.Tensor, int]:
        model = self.plan.inputs[ref.model]
        if model.source is not None:  # derived tensors: cached under their keys, made on a miss
            return model.source.load(ref.tensor, key, self.blobs, self.reader)
        if model.target is None:
            info = model.tensors[ref.tensor]
            return self.reader.get(info), info.nbytes
        t = self.blobs.get(key)
        if t is not None:
            return t, t.numel() * t.element_size()
        if model.target == "derived":  # a remote task's derived input: the driver cached it
            raise RuntimeError(f"derived input {ref.tensor} ({key}) is not in the shared cache {self.blobs!r}")
        if ref.model not in self._outputs:
            from mergefile.io.model_dir import ModelDir

            self._outputs[ref.model] = ModelDir.open(model.path)
        info = self._outputs[ref.model].tensors[ref.tensor]
        return self.reader.get(info), info.nbytes

    def release(self, refs) -> None:
        """Drop the mapped pages of model-file inputs a finished job read."""
        for ref in refs:
            model = self.plan.inputs[ref.model]
            if model.target is None and model.source is None:
                self.reader.release(model.tensors[ref.tensor])


def _cut(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return t[tuple(slice(0, s) for s in shape)]


def align(tensors: list[torch.Tensor], policy: EmbedPolicy, base_index: int | None) -> list[torch.Tensor]:
    """Make vocabulary-sized matrices the same shape (reference §1.6)."""
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) == 1:
        return tensors
    if policy is EmbedPolicy.BASE and base_index is not None:
        target = tuple(tensors[base_index].shape)
        out = []
        for t in tensors:
            if tuple(t.shape) == target:
                out.append(t)
                continue
            # rows the other model lacks keep the base's values, so their delta is zero
            filled = tensors[base_index].clone()
            common = tuple(min(a, b) for a, b in zip(t.shape, target))
            filled[tuple(slice(0, s) for s in common)] = _cut(t, common)
            out.append(filled)
        return out
    common = tuple(min(d) for d in zip(*(t.shape for t in tensors)))
    return [_cut(t, common) for t in tensors]


def _generator(key: str, seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed_from_key(key, seed))
    return g


class KeyedStages:
    """The build's ``StageRunner``: each stage seeded by its own content key (``keys[i]``).

    With ``blobs`` (and ``store``) a stage whose compact form is cached is rebuilt from it, and a
    computed one's compact form is kept; ``loader`` lets an input's mapped pages go once its stage
    is done (the merge reads the stage output, not the input). Counts go to ``res``.
    """

    def __init__(
        self,
        keys: dict[int, str],
        seed: int,
        blobs=None,
        store: bool = False,
        device: str = "cpu",
        res: JobResult | None = None,
        release=None,
    ):
        self.keys, self.seed, self.blobs, self.store, self.device = keys, seed, blobs, store, device
        self.res, self.release = res, release

    def __call__(self, method: Method, i: int, x, base, params, ctx: MergeContext):
        st, sk = method.stage, self.keys[i]
        cached = self.blobs.get(sk) if self.store else None
        if cached is not None:
            if self.res is not None:
                self.res.stage_hits += 1
            y = st.apply(x, base, cached) if st.split else cached.to(self.device)
        else:
            ctx = replace(ctx, generator=_generator(sk, self.seed))
            if st.split is not None:
                y, compact = st.split(x, base, params, ctx)
            else:
                y = compact = st.fn(x, base, params, ctx)
            if compact is not None and self.res is not None:  # None: nothing to keep (e.g. density 1)
                self.res.stage_misses += 1
                if self.store:
                    self.res.bytes_written += self.blobs.put(sk, compact.detach().to("cpu").contiguous())
        if self.release is not None:
            self.release(i)
        return y


def compute_job(
    job: TensorJob, kp: KeyedPlan, loader: InputLoader, blobs, device: str = "cpu"
) -> tuple[torch.Tensor, JobResult]:
    """Merge one tensor; store and return it (on CPU).

    The IO around ``methods.apply.run_method``: load, cast, re-index and align the inputs, key and
    cache the stages (``KeyedStages``), cast and store the result.
    """
    t0 = time.perf_counter()
    key = kp.keys[job.name]
    res = JobResult(job.name, key, "computed", 0.0, 0, 0)
    method = get_method(job.method)
    raw = []
    for ref in job.inputs:
        t, n = loader.load(ref, kp.input_keys[(ref.model, ref.tensor)])
        res.bytes_read += n
        raw.append(t)
    dtype = _compute_dtype(job, raw)
    tensors = [t.to(device=device, dtype=dtype) for t in raw]
    if job.vocab is not None:  # merged tokenizer: rows re-indexed to the output vocabulary first
        from mergefile.run.embed_remap import remap_inputs

        tensors = remap_inputs(tensors, kp.plan.vocab.remaps[job.name])
    tensors = align(tensors, method.embed, job.base_index)
    stages = None
    if has_stages(method, len(tensors), job.base_index):
        plan = stage_plan(method, job, stage_inputs(job, kp))
        # the merge reads stage outputs, not these inputs: their mapped pages go once staged
        stages = KeyedStages(
            {i: sk for i, _, sk in plan},
            job.seed,
            blobs,
            keep_stages(method, tensors, job.base_index, len(plan)),
            device,
            res,
            release=lambda i: loader.release([job.inputs[i]]),
        )
    ctx = MergeContext(job.name, job.is_embed, job.base_index, _generator(key, job.seed), consume_inputs=True)
    result = run_method(method, tensors, [dict(p) for p in job.per_model], dict(job.params), ctx, stages)
    if job.out_dtype:
        from mergefile.io.header import parse_dtype

        result = result.to(parse_dtype(job.out_dtype))
    result = result.detach().to("cpu").contiguous()
    del tensors, raw
    loader.release(job.inputs)
    if keep_result(job, kp, blobs):
        res.bytes_written += blobs.put(key, result)
    res.seconds = time.perf_counter() - t0
    return result, res


def _compute_dtype(job: TensorJob, raw: list[torch.Tensor]) -> torch.dtype:
    if job.dtype:
        from mergefile.io.header import parse_dtype

        return parse_dtype(job.dtype)
    i = job.base_index if job.base_index is not None else 0
    return raw[i].dtype


def job_input_bytes(job: TensorJob, plan: TargetPlan) -> int:
    """Bytes a job reads, for -n estimates and the memory budget."""
    total = 0
    for r in job.inputs:
        total += plan.inputs[r.model].tensors[r.tensor].nbytes
    return total
