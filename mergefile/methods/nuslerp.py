"""NuSLERP: slerp of exactly two models with weights, per tensor, per row or per column.

``t = w2 / (w1 + w2)`` (0.5 when the weights sum to ~0). With a base model (a third model),
the two task vectors are slerped and added back to the base. ``nuslerp_flatten`` (default)
treats the tensor as one vector; otherwise each vector along the last dimension is slerped on
its own, or along dim 0 with ``nuslerp_row_wise``. Vectors with ``1 - cos²θ <= 1e-16`` (colinear)
are interpolated linearly.

Everything is computed in the inputs' dtype, as mergekit 0.1.5 does: a bf16 merge takes its
norms, cosines, angles, sines and sums in bf16, rounding after each operation, so its output
is mergekit's bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mergefile._lazy import torch
from mergefile.methods._common import finish, method_error, model_param, native, others, out_dtype
from mergefile.methods.base import BaseRule, EmbedPolicy, MergeContext, Method, ParamSpec

_NORM_EPS = 1e-7
_COLINEAR_EPS = 1e-8  # colinear when sin²θ = 1 - cos²θ <= this squared


def _direction(x: torch.Tensor) -> torch.Tensor:
    """``x`` over its norm along the last dim (clamped at 1e-7), in ``x``'s dtype."""
    return x / x.norm(dim=-1, keepdim=True).clamp(min=_NORM_EPS)


def nuslerp(t: float, v0: torch.Tensor, v1: torch.Tensor, row_wise: bool = False, flatten: bool = True) -> torch.Tensor:
    """Slerp ``v0 -> v1`` by ``t``: whole tensor (flatten), else per vector along one dim.

    Computed in the tensors' dtype; ``t`` stays a Python float."""
    shape = v0.shape
    if flatten:
        a, b = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        a, b = v0.transpose(0, -1), v1.transpose(0, -1)
    else:
        a, b = v0, v1
    cos = (_direction(a) * _direction(b)).sum(dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= _COLINEAR_EPS**2
    theta = torch.acos(torch.where(colinear, 0, cos))  # finite on both branches
    res = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)
    res = torch.where(colinear, (1 - t) * a + t * b, res)
    if row_wise and not flatten:
        res = res.transpose(0, -1)
    return res.reshape(shape)


def merge(
    tensors: Sequence[torch.Tensor],
    per_model: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    ctx: MergeContext,
) -> torch.Tensor:
    """Weighted slerp of the two non-base models (of their task vectors when a base is given)."""
    if len(tensors) == 1:
        return tensors[0]
    idx = others(tensors, ctx)
    if len(idx) != 2:
        raise method_error(
            "nuslerp",
            ctx,
            f"takes exactly two models besides the base, got {len(idx)}",
            "the base must be a third model; use multislerp for more",
        )
    w1, w2 = (model_param("nuslerp", per_model[i], "weight", i, ctx) for i in idx)
    t = 0.5 if abs(w1 + w2) < 1e-6 else w2 / (w1 + w2)
    dtype = tensors[0].dtype
    for x in tensors[1:]:
        dtype = torch.promote_types(dtype, x.dtype)  # one dtype for all, as mergekit aligns them
    a, b = native(tensors[idx[0]].to(dtype)), native(tensors[idx[1]].to(dtype))
    row_wise, flatten = bool(params["nuslerp_row_wise"]), bool(params["nuslerp_flatten"])
    if ctx.base_index is None:
        out = nuslerp(t, a, b, row_wise, flatten)
    else:
        base = native(tensors[ctx.base_index].to(dtype))
        out = base + nuslerp(t, a - base, b - base, row_wise, flatten)
    return finish(out, out_dtype(tensors, ctx))


METHOD = Method(
    name="nuslerp",
    version=2,  # 2: computed in the inputs' dtype as mergekit 0.1.5 (bf16 bits equal), its colinear test
    reference="https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md",
    params=(
        ParamSpec("weight", per_model=True, doc="relative weight; t = w2 / (w1 + w2)"),
        ParamSpec("nuslerp_flatten", True, type=bool, doc="slerp the tensor as one vector"),
        ParamSpec("nuslerp_row_wise", False, type=bool, doc="unflattened: slerp along dim 0"),
    ),
    merge=merge,
    base=BaseRule.OPTIONAL,
    min_models=2,
    max_models=3,
    embed=EmbedPolicy.COMMON,
    summary="weighted slerp of two models, optionally of their task vectors from a base",
)
