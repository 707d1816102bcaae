"""Arcee Fusion: keep only the other model's most important changes over the base.

Importance ``I = |other - base| * KL(softmax(other) || softmax(base))`` (softmax and KL along
the last dim, one KL per row, +1e-8 inside); threshold ``median(I) + 1.5 * IQR(I)`` from
quantiles of a sorted sample; ``out = base + [I >= threshold] * (other - base)``. Tensors with
more than 1e6 entries estimate the quantiles from 1e6 entries drawn with the node's generator
(mergekit uses the global RNG, so its output varies between runs without a seed).

The scores and the threshold are computed in float64 whatever the compute dtype: the mask is a
hard cut, and in float32 the last-bit differences between CPU and CUDA reductions (softmax, KL)
flipped entries that lie at the threshold, so the two devices disagreed by whole deltas. In
float64 such flips need a score within ~1e-16 of the cut.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mergefile._lazy import torch

from mergefile.methods._common import finish, method_error, others, require_base, up
from mergefile.methods.base import BaseRule, EmbedPolicy, MergeContext, Method

SAMPLE_SIZE = 1_000_000
_EPS = 1e-8


def importance(other: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """Magnitude of change times the row's KL divergence between softmaxed rows."""
    p = torch.nn.functional.softmax(other, dim=-1) + _EPS
    q = torch.nn.functional.softmax(base, dim=-1) + _EPS
    kl = (p * torch.log(p / q)).sum(dim=-1)
    return (other - base).abs() * kl.unsqueeze(-1)


def threshold(scores: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """``median + 1.5 * IQR`` of the scores (of a seeded sample of 1e6 when larger)."""
    flat = scores.reshape(-1)
    if flat.numel() > SAMPLE_SIZE:
        if gen is None:
            gen = torch.Generator().manual_seed(0)
        pick = torch.randint(flat.numel(), (SAMPLE_SIZE,), generator=gen).to(flat.device)
        flat = flat[pick]
    ordered = torch.sort(flat).values
    n = ordered.numel() - 1
    q1, med, q3 = (ordered[int(q * n)] for q in (0.25, 0.5, 0.75))
    return med + 1.5 * (q3 - q1)


def merge(tensors: Sequence[torch.Tensor], per_model: Sequence[Mapping[str, Any]],
          params: Mapping[str, Any], ctx: MergeContext) -> torch.Tensor:
    """Base plus the other model's delta where its importance is an upper outlier."""
    if len(tensors) == 1:
        return tensors[0]
    base = require_base("arcee_fusion", tensors, ctx)
    idx = others(tensors, ctx)
    if len(idx) != 1:
        raise method_error("arcee_fusion", ctx,
                           f"takes the base and exactly one other model, got {len(tensors)} inputs")
    b, o = up(base), up(tensors[idx[0]])
    scores = importance(o.double(), b.double())
    mask = scores >= threshold(scores, ctx.generator)
    return finish(b + mask * (o - b), base.dtype)


METHOD = Method(
    name="arcee_fusion",
    version=2,  # 2: scores in float64 (borderline entries may select differently from 1)
    reference="https://arcee.ai",
    params=(),
    merge=merge,
    base=BaseRule.REQUIRED,
    min_models=2,
    max_models=2,
    embed=EmbedPolicy.COMMON,
    random=True,
    summary="keep the other model's changes whose importance is an upper outlier",
)
