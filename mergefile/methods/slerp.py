"""SLERP: spherical interpolation between the base (t=0) and one other model (t=1).

The whole tensor is one vector. With unit directions ``u0, u1`` and ``theta = acos(u0·u1)``:
``out = sin((1-t)theta)/sin(theta) * v0 + sin(t*theta)/sin(theta) * v1`` on the unnormalized
tensors; nearly colinear inputs (``|u0·u1| > 0.9995``) fall back to ``(1-t) v0 + t v1``.
Computed in float32 (as mergekit, which goes through NumPy float32) and cast to the base dtype.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from mergefile._lazy import torch

from mergefile.methods._common import finish, method_error, others, require_base
from mergefile.methods.base import BaseRule, EmbedPolicy, MergeContext, Method, ParamSpec

DOT_THRESHOLD = 0.9995
_EPS = 1e-8


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of two same-shape tensors, in float32."""
    a, b = v0.float(), v1.float()
    na, nb = a.norm().item(), b.norm().item()
    ua = a / na if na > _EPS else a
    ub = b / nb if nb > _EPS else b
    dot = (ua * ub).sum().item()
    if abs(dot) > DOT_THRESHOLD:
        return (1 - t) * a + t * b
    theta = math.acos(dot)
    s = math.sin(theta)
    return (math.sin(theta - theta * t) / s) * a + (math.sin(theta * t) / s) * b


def merge(tensors: Sequence[torch.Tensor], per_model: Sequence[Mapping[str, Any]],
          params: Mapping[str, Any], ctx: MergeContext) -> torch.Tensor:
    """Slerp from the base to the other model by ``t``."""
    if len(tensors) == 1:  # only one model has this tensor: copy it, as mergekit does
        return tensors[0]
    base = require_base("slerp", tensors, ctx)
    rest = others(tensors, ctx)
    if len(rest) != 1:
        raise method_error("slerp", ctx, f"takes the base and exactly one other model, got {len(tensors)} inputs",
                           "use multislerp or karcher for more models")
    return finish(slerp(float(params["t"]), base, tensors[rest[0]]), base.dtype)


METHOD = Method(
    name="slerp",
    version=1,
    reference="https://doi.org/10.1145/325165.325242",
    params=(ParamSpec("t", doc="interpolation factor: 0 = base, 1 = the other model"),),
    merge=merge,
    base=BaseRule.REQUIRED,
    min_models=2,
    max_models=2,
    embed=EmbedPolicy.COMMON,
    summary="spherical interpolation between the base and one other model",
)
