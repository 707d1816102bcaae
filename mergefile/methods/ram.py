"""RAM and RAM+ (tensor-local): average task vectors only where several models change a weight.

A model is *active* at a position when ``|tau_i| > epsilon``. Positions changed by one model
take its delta as is; positions changed by several take the mean of the active deltas; others
keep the base. ``ramplus_tl`` scales each model's unique contributions by
``1 + r * clamp(shared_i / unique_i, 0, alpha)`` computed on this tensor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from mergefile._lazy import torch
from mergefile.methods._common import finish, others, require_base, up
from mergefile.methods.base import BaseRule, EmbedPolicy, MergeContext, Method, ParamSpec

REFERENCE = "https://arxiv.org/abs/2601.13572"


def ram_delta(tvs: torch.Tensor, epsilon: float, r: float | None = None, alpha: float = 0.0) -> torch.Tensor:
    """Merged task vector from stacked task vectors (N, ...); RAM+ when ``r`` is given."""
    active = tvs.abs() > epsilon
    count = active.sum(dim=0, keepdim=True)
    unique = active & (count == 1)
    shared = active & (count > 1)
    scale = torch.ones(tvs.shape[0], device=tvs.device, dtype=tvs.dtype)
    if r is not None:
        dims = tuple(range(1, tvs.dim()))
        rho = shared.sum(dim=dims).to(tvs.dtype) / unique.sum(dim=dims).to(tvs.dtype).clamp(min=epsilon)
        scale = 1 + r * rho.clamp(0, alpha)
    scale = scale.view(-1, *[1] * (tvs.dim() - 1))
    merged = tvs * unique * scale + tvs * shared / count.clamp(min=1)
    return merged.sum(dim=0)


def _merge(
    plus: bool,
    tensors: Sequence[torch.Tensor],
    per_model: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    ctx: MergeContext,
) -> torch.Tensor:
    name = "ramplus_tl" if plus else "ram"
    base = require_base(name, tensors, ctx)
    idx = others(tensors, ctx)
    if not idx:
        return base
    b = up(base)
    tvs = torch.stack([up(tensors[i]) - b for i in idx])
    if plus:
        delta = ram_delta(tvs, float(params["epsilon"]), float(params["r"]), float(params["alpha"]))
    else:
        delta = ram_delta(tvs, float(params["epsilon"]))
    return finish(b + delta, base.dtype)


_EPSILON = ParamSpec("epsilon", 1e-5, doc="|delta| above this counts as a change")

RAM = Method(
    name="ram",
    version=1,
    reference=REFERENCE,
    params=(_EPSILON,),
    merge=partial(_merge, False),
    base=BaseRule.REQUIRED,
    min_models=2,
    embed=EmbedPolicy.BASE,
    summary="keep unique changes, average changes several models share",
)

RAMPLUS_TL = Method(
    name="ramplus_tl",
    version=1,
    reference=REFERENCE,
    params=(
        ParamSpec("r", 0.1, doc="boost rate of unique contributions"),
        ParamSpec("alpha", 0.2, doc="cap of the shared/unique ratio"),
        _EPSILON,
    ),
    merge=partial(_merge, True),
    base=BaseRule.REQUIRED,
    min_models=2,
    embed=EmbedPolicy.BASE,
    summary="RAM with unique changes boosted by each model's overlap ratio (per tensor)",
)

METHODS: tuple[Method, ...] = (RAM, RAMPLUS_TL)
