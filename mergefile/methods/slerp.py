"""SLERP: spherical interpolation between the base (t=0) and one other model (t=1).

The whole tensor is one vector. With unit directions ``u0, u1`` and ``theta = acos(u0·u1)``:
``out = sin((1-t)theta)/sin(theta) * v0 + sin(t*theta)/sin(theta) * v1`` on the unnormalized
tensors; nearly colinear inputs (``|u0·u1| > 0.9995``) fall back to ``(1-t) v0 + t v1``.
Computed in float32 in chunks, step by step as mergekit 0.1.5 computes it, and cast to the base
dtype.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mergefile._lazy import torch
from mergefile.methods._common import finish, method_error, others, require_base
from mergefile.methods.base import BaseRule, EmbedPolicy, MergeContext, Method, ParamSpec

DOT_THRESHOLD = 0.9995
_EPS = 1e-8
CHUNK_ELEMENTS = 1024 * 1024  # float32 scratch per pass: bounds memory (as mergekit's kernel)


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of two same-shape tensors, in float32 (float64 inputs: float64).

    Streams the tensors in chunks of ``CHUNK_ELEMENTS``: the norms, the dot product and the
    result each take one pass, so the scratch memory is a few chunks, not copies of the tensor.
    Every step is mergekit 0.1.5's (chunk norms, then the norm of the norms; the dot of
    normalized chunks, summed; coefficients in float32 tensors), so a tensor merged alone gives
    mergekit's bits.
    """
    dtype = torch.float64 if v0.dtype == torch.float64 else torch.float32
    a, b = v0.reshape(1, -1), v1.reshape(1, -1)
    tt = torch.tensor([t], dtype=dtype, device=a.device).reshape(-1, 1)
    n = a.shape[1]
    if not n:
        return ((1 - tt) * a + tt * b).reshape(v0.shape).to(dtype)
    spans = [(i, min(i + CHUNK_ELEMENTS, n)) for i in range(0, n, CHUNK_ELEMENTS)]
    na = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(a[:, i:j].to(dtype), dim=1, keepdim=True) for i, j in spans]), dim=0
    )
    nb = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(b[:, i:j].to(dtype), dim=1, keepdim=True) for i, j in spans]), dim=0
    )
    na, nb = torch.where(na > _EPS, na, 1), torch.where(nb > _EPS, nb, 1)
    dot = (
        torch.stack(
            [((a[:, i:j].to(dtype) / na) * (b[:, i:j].to(dtype) / nb)).sum(dim=1, keepdim=True) for i, j in spans]
        )
        .sum(dim=0)
        .clamp(-1, 1)
    )
    linear = dot.abs() > DOT_THRESHOLD
    theta = torch.acos(torch.where(linear, 0, dot))
    sin_theta = torch.sin(theta)
    coef_a = torch.where(linear, 1 - tt, torch.sin((1 - tt) * theta) / sin_theta)
    coef_b = torch.where(linear, tt, torch.sin(tt * theta) / sin_theta)
    out = torch.empty(a.shape, dtype=dtype, device=a.device)
    for i, j in spans:
        out[:, i:j] = coef_a * a[:, i:j].to(dtype) + coef_b * b[:, i:j].to(dtype)
    return out.reshape(v0.shape)


def merge(
    tensors: Sequence[torch.Tensor],
    per_model: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    ctx: MergeContext,
) -> torch.Tensor:
    """Slerp from the base to the other model by ``t``."""
    if len(tensors) == 1:  # only one model has this tensor: copy it, as mergekit does
        return tensors[0]
    base = require_base("slerp", tensors, ctx)
    rest = others(tensors, ctx)
    if len(rest) != 1:
        raise method_error(
            "slerp",
            ctx,
            f"takes the base and exactly one other model, got {len(tensors)} inputs",
            "use multislerp or karcher for more models",
        )
    return finish(slerp(float(params["t"]), base, tensors[rest[0]]), base.dtype)


METHOD = Method(
    name="slerp",
    version=2,
    reference="https://doi.org/10.1145/325165.325242",
    params=(ParamSpec("t", doc="interpolation factor: 0 = base, 1 = the other model"),),
    merge=merge,
    base=BaseRule.REQUIRED,
    min_models=2,
    max_models=2,
    embed=EmbedPolicy.COMMON,
    summary="spherical interpolation between the base and one other model",
)
