"""Arcee Fusion: keep only the other model's most important changes over the base.

Importance ``I = |other - base| * KL(softmax(other) || softmax(base))`` (softmax and KL along
the last dim, one KL per row, +1e-8 inside); threshold ``median(I) + 1.5 * IQR(I)`` from
quantiles of a sorted sample; ``out = base + (other - base) * [I >= threshold]``. Tensors with
more than 1e6 entries estimate the quantiles from 1e6 entries drawn with the node's generator
(mergekit uses the global RNG, so its output varies between runs without a seed).

Scores are computed as mergekit computes them -- in the compute dtype, so a float32 merge keeps
exactly mergekit's entries -- and always **on the CPU**. The mask is a hard cut: CUDA's softmax,
exp, log and row sums differ from the CPU's in the last bit, which flips entries that sit at the
threshold, so the two devices would disagree by whole deltas. Scoring on the CPU gives every
device the same mask; what remains on the device (subtract, multiply by 0/1, add) is correctly
rounded IEEE arithmetic, equal everywhere. (Version 2 scored in float64 instead: devices agreed,
but ~0.5% of every tensor's entries differed from mergekit's.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mergefile._lazy import torch
from mergefile.methods._common import finish, method_error, native, others, require_base
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


def merge(
    tensors: Sequence[torch.Tensor],
    per_model: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    ctx: MergeContext,
) -> torch.Tensor:
    """Base plus the other model's delta where its importance is an upper outlier."""
    if len(tensors) == 1:
        return tensors[0]
    base = require_base("arcee_fusion", tensors, ctx)
    idx = others(tensors, ctx)
    if len(idx) != 1:
        raise method_error(
            "arcee_fusion", ctx, f"takes the base and exactly one other model, got {len(tensors)} inputs"
        )
    b, o = native(base), native(tensors[idx[0]])
    scores = importance(o.cpu(), b.cpu())  # on the CPU whatever the device: one mask everywhere
    mask = (scores >= threshold(scores, ctx.generator)).float().to(o.device)
    return finish(b + (o - b) * mask, base.dtype)  # mergekit's expression and dtype promotion


METHOD = Method(
    name="arcee_fusion",
    version=3,  # 3: scores in the compute dtype on the CPU, as mergekit (2: float64)
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
