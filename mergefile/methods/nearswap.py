"""NearSwap: take the other model's value only where it is already close to the base.

``w = clamp(t / max(|base - other|, 1e-6), 0, 1)``; ``out = w * other + (1 - w) * base``:
entries that differ by less than ``t`` are swapped fully, larger differences less and less.
Computed in the inputs' dtype, as mergekit 0.1.5 does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mergefile._lazy import torch
from mergefile.methods._common import finish, method_error, native, others, require_base
from mergefile.methods.base import BaseRule, EmbedPolicy, MergeContext, Method, ParamSpec


def nearswap(t: float, base: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Element-wise interpolation weighted by closeness to the base."""
    weight = (t / (base - other).abs().clamp(min=1e-6)).clamp(0, 1)
    return weight * other + (1 - weight) * base


def merge(
    tensors: Sequence[torch.Tensor],
    per_model: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    ctx: MergeContext,
) -> torch.Tensor:
    """NearSwap of the base and the one other model."""
    base = require_base("nearswap", tensors, ctx)
    idx = others(tensors, ctx)
    if not idx:
        return base
    if len(idx) != 1:
        raise method_error("nearswap", ctx, f"takes the base and exactly one other model, got {len(tensors)} inputs")
    out = nearswap(float(params["t"]), native(base), native(tensors[idx[0]]))
    return finish(out, base.dtype)


METHOD = Method(
    name="nearswap",
    version=2,  # 2: computed in the inputs' dtype, as mergekit 0.1.5
    reference="https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001",
    params=(ParamSpec("t", doc="distance below which the other model's value is taken fully"),),
    merge=merge,
    base=BaseRule.REQUIRED,
    min_models=2,
    max_models=2,
    embed=EmbedPolicy.BASE,
    summary="swap in the other model's values where they are close to the base",
)
