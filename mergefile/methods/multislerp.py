"""Multi-SLERP: a weighted barycentre of any number of models on the hypersphere.

Each input (a task vector when a base is given) is flattened and projected to the unit sphere;
the weighted mean direction ``m`` is the tangent point; the weighted mean of the tangent
vectors is mapped back with the exponential map and scaled by the weighted mean norm.
Weights summing to 0 under ``normalize_weights`` are an error (mergekit divides by zero).

Computed in the inputs' dtype, as mergekit 0.1.5 does: the weights become a tensor of that
dtype, and norms, dot products, sums and the exponential map round after each operation, so a
bf16 merge gives mergekit's bits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mergefile._lazy import torch
from mergefile.methods._common import finish, method_error, model_param, native, others, out_dtype
from mergefile.methods.base import BaseRule, EmbedPolicy, MergeContext, Method, ParamCheckError, ParamSpec


def multislerp(xs: torch.Tensor, weights: torch.Tensor, eps: float) -> torch.Tensor | None:
    """Barycentre of the rows of ``xs`` (N, D), in their dtype; None when the weighted unit mean is ~0."""
    w = weights.view(-1, 1)
    norms = xs.norm(dim=-1, keepdim=True)
    units = xs / (norms + eps)
    mean = (units * w).sum(dim=0)
    mean_norm = mean.norm()
    if mean_norm < eps:
        return None
    mean = mean / mean_norm
    cos = (units * mean).sum(dim=-1, keepdim=True)
    tangent = ((units - cos * mean) * w).sum(dim=0)
    tn = tangent.norm() + eps
    direction = mean * torch.cos(tn) + tangent * (torch.sin(tn) / tn)
    return direction * (norms.squeeze(-1) * weights).sum()


def merge(
    tensors: Sequence[torch.Tensor],
    per_model: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    ctx: MergeContext,
) -> torch.Tensor:
    """Spherical barycentre of the non-base models (of their task vectors when a base is given)."""
    idx = others(tensors, ctx)
    if len(idx) == 1:
        return tensors[idx[0]]
    if not idx:
        return tensors[0]
    dtype = tensors[0].dtype
    for x in tensors[1:]:
        dtype = torch.promote_types(dtype, x.dtype)  # one dtype for all, as mergekit aligns them
    base = native(tensors[ctx.base_index].to(dtype)) if ctx.base_index is not None else None
    xs = torch.stack([native(tensors[i].to(dtype)) for i in idx])
    if base is not None:
        xs = xs - base
    w = [model_param("multislerp", per_model[i], "weight", i, ctx) for i in idx]
    weights = torch.tensor(w, dtype=xs.dtype, device=xs.device)
    if params["normalize_weights"]:
        if abs(sum(w)) < 1e-12:
            raise method_error("multislerp", ctx, f"weights {w} sum to 0", "change the weights")
        weights = weights / weights.sum()
    flat = xs.reshape(len(idx), -1)
    res = multislerp(flat, weights, float(params["eps"]))
    if res is None:
        if len(idx) != 2:
            raise method_error(
                "multislerp", ctx, "the weighted mean direction is zero (antipodal inputs?)", "change the weights"
            )
        res = flat[0] * weights[0] + flat[1] * weights[1]
    out = res.view(xs.shape[1:])
    if base is not None:
        out = out + base
    return finish(out, out_dtype(tensors, ctx))


def check(params: Mapping[str, Any], per_model: Sequence[Mapping[str, Any]], base_index: int | None) -> None:
    """The zero-sum error of :func:`merge`, raised by the planner before any tensor is read."""
    w = [pm["weight"] for i, pm in enumerate(per_model) if i != base_index]
    if params["normalize_weights"] and len(w) > 1 and None not in w and abs(sum(w)) < 1e-12:
        raise ParamCheckError(f"weights {w} sum to 0", hint="change the weights")


METHOD = Method(
    name="multislerp",
    version=2,  # 2: computed in the inputs' dtype, as mergekit 0.1.5 (bf16 bits equal)
    reference="https://goddard.blog/posts/multislerp-wow-what-a-cool-idea",
    params=(
        ParamSpec("weight", per_model=True, doc="this model's weight in the barycentre"),
        ParamSpec("normalize_weights", True, type=bool, doc="scale weights to sum to 1"),
        ParamSpec("eps", 1e-8, doc="numerical floor for norms"),
    ),
    merge=merge,
    base=BaseRule.OPTIONAL,
    min_models=1,
    embed=EmbedPolicy.COMMON,
    summary="spherical weighted barycentre of any number of models",
    check=check,
)
