"""MagMax: per entry, the task vector of largest magnitude (Marczak et al., ECCV 2024).

``tau_i = x_i - base``; at every entry the task vector with the largest ``|tau_i|`` wins (a later
model wins a tie, as the official release folds them with ``>=``); ``out = base + lambda * tau``.
Element-wise, so embeddings, norms and biases are treated like any other tensor. Computed in
float32 for half-precision inputs, rounded to the base's dtype once at the end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mergefile._lazy import torch
from mergefile.methods._common import finish, others, require_base, up
from mergefile.methods.base import BaseRule, EmbedPolicy, MergeContext, Method, ParamSpec


def max_magnitude(deltas: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per entry the value of largest magnitude among ``deltas``; later ones win ties."""
    best = deltas[0]
    for d in deltas[1:]:
        best = torch.where(d.abs() >= best.abs(), d, best)
    return best


def merge(
    tensors: Sequence[torch.Tensor],
    per_model: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    ctx: MergeContext,
) -> torch.Tensor:
    """``base + lambda * maxabs(tau_i)``."""
    base = require_base("magmax", tensors, ctx)
    idx = others(tensors, ctx)
    if not idx:
        return base
    b = up(base)
    tau = max_magnitude([up(tensors[i]) - b for i in idx])
    return finish(b + float(params["lambda"]) * tau, base.dtype)


METHOD = Method(
    name="magmax",
    version=1,
    reference="https://arxiv.org/abs/2407.06322",
    params=(ParamSpec("lambda", 0.5, doc="scale of the selected task vector (0.5: the paper's release)"),),
    merge=merge,
    base=BaseRule.REQUIRED,
    min_models=2,
    embed=EmbedPolicy.BASE,
    summary="per entry the task vector of largest magnitude, scaled by lambda",
    mergekit=False,
)
