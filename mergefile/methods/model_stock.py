"""Model Stock: move from the base towards the fine-tunes' average by their angular agreement.

Offsets ``d_i = w_i - w_0`` (whole tensor, or per row with ``filter_wise``); ``cos`` is the mean
pairwise cosine between offsets; ``t = N cos / (1 + (N-1) cos)``; ``out = t * mean(w_i) + (1-t) w_0``.
Unlike mergekit, ``cos`` is clamped at 0 before the formula, so ``t`` stays in [0, 1]
(mergekit's negative cosines give negative or exploding ``t``); for ``cos >= 0`` nothing changes.
Computed in the inputs' dtype, step by step as mergekit 0.1.5 does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mergefile._lazy import torch
from mergefile.methods._common import finish, method_error, native, others, require_base
from mergefile.methods.base import BaseRule, EmbedPolicy, MergeContext, Method, ParamSpec


def stock_ratio(offsets: list[torch.Tensor]) -> torch.Tensor:
    """``t`` from the mean pairwise cosine of the offsets along their last dim, in [0, 1]."""
    cosines = []
    norms = [a.norm(dim=-1) for a in offsets]  # once per offset, not once per pair: the same values
    for i, a in enumerate(offsets):
        for j in range(i + 1, len(offsets)):
            denom = (norms[i] * norms[j]).clamp(min=1e-6)
            cosines.append(((a * offsets[j]).sum(dim=-1) / denom).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1).clamp(min=0)
    n = len(offsets)
    return (n * cos / (1 + (n - 1) * cos)).clamp(0, 1)


def merge(
    tensors: Sequence[torch.Tensor],
    per_model: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    ctx: MergeContext,
) -> torch.Tensor:
    """Interpolate between the base and the fine-tunes' mean by the Model Stock ratio."""
    base = require_base("model_stock", tensors, ctx)
    idx = others(tensors, ctx)
    if not idx:
        return base
    if len(idx) < 2:
        raise method_error(
            "model_stock",
            ctx,
            "needs the base plus at least two other models",
            "add a fine-tune, or use slerp / task_arithmetic for one",
        )
    w0 = native(base)  # in the inputs' dtype, as mergekit 0.1.5
    ws = [native(tensors[i]) for i in idx]
    if params["filter_wise"]:
        if w0.dim() == 1:  # a bias is a single row
            w0, ws = w0.unsqueeze(0), [w.unsqueeze(0) for w in ws]
    else:
        w0, ws = w0.reshape(-1), [w.reshape(-1) for w in ws]
    t = stock_ratio([w - w0 for w in ws])
    avg = sum(ws[1:], ws[0]) / len(ws)
    out = t * avg + (1 - t) * w0
    return finish(out.reshape(base.shape), base.dtype)


METHOD = Method(
    name="model_stock",
    version=2,  # 2: computed in the inputs' dtype, as mergekit 0.1.5
    reference="https://arxiv.org/abs/2403.19522",
    params=(ParamSpec("filter_wise", False, type=bool, doc="one ratio per row instead of per tensor"),),
    merge=merge,
    base=BaseRule.REQUIRED,
    min_models=3,
    embed=EmbedPolicy.COMMON,
    summary="geometric interpolation from the base towards the fine-tunes' average",
)
