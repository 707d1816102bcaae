"""Consensus merging with TALL masks (Wang et al., ICML 2024): consensus_ta and consensus_ties.

With weighted task vectors ``tau_t = w_t (x_t - base)`` and the row's merged task vector
``tau_m`` (their sum for consensus_ta; TIES trim + sign election + disjoint mean for
consensus_ties), each task's TALL mask keeps the entries where that task matters:
``m_t = |tau_t| > mask_lambda * |tau_m - tau_t|``. An entry survives when at least ``k`` masks
keep it (``k = 2`` drops the "selfish" weights only one task uses, ``k = 1`` only the
"catastrophic" ones no task uses, ``k = 0`` reduces to the base method), and
``out = base + lambda * (tau_m * consensus)``.

The paper tunes ``mask_lambda`` per task on validation data; data-free, one value serves every
task (0.6, FusionBench's default). Everything is per tensor (the paper flattens the whole model;
TIES' top-k is per tensor here, as in mergekit), element-wise, so embeddings and norms are
treated like other tensors. Computed in float32 for half-precision inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from mergefile._lazy import torch
from mergefile.methods._common import finish, others, require_base, up
from mergefile.methods.base import BaseRule, EmbedPolicy, MergeContext, Method, ParamCheckError, ParamSpec
from mergefile.methods.gta import COMBINERS, Consensus

_REFERENCE = "https://arxiv.org/abs/2405.07813"


def trim(tau: torch.Tensor, density: float) -> torch.Tensor:
    """TIES' trim: keep the ``int(n * density)`` entries of largest magnitude, zero the rest."""
    n = tau.numel()
    k = int(n * density)
    if k >= n:
        return tau
    keep = torch.zeros(n, dtype=torch.bool, device=tau.device)
    if k > 0:
        keep[tau.reshape(-1).abs().topk(k).indices] = True
    return tau * keep.view(tau.shape)


def consensus_mask(taus: torch.Tensor, merged: torch.Tensor, mask_lambda: float, k: int) -> torch.Tensor:
    """Entries that at least ``k`` tasks' TALL masks keep; ``taus`` is stacked ``(T, ...)``."""
    tall = taus.abs() > mask_lambda * (merged.unsqueeze(0) - taus).abs()
    return tall.sum(dim=0) >= k


def _merged_ties(
    taus: torch.Tensor, weights: torch.Tensor, per_model: Sequence[Mapping[str, Any]], idx: list[int]
) -> torch.Tensor:
    """TIES' merged task vector of already weighted ``taus``: trim, elect signs, disjoint mean."""
    trimmed = torch.stack([trim(t, float(per_model[i]["density"])) for t, i in zip(taus, idx)])
    return COMBINERS[Consensus.SUM](trimmed, weights, True)


def _merge(
    ties: bool,
    tensors: Sequence[torch.Tensor],
    per_model: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    ctx: MergeContext,
) -> torch.Tensor:
    """``base + lambda * (tau_m * consensus)`` (module docstring)."""
    name = "consensus_ties" if ties else "consensus_ta"
    base = require_base(name, tensors, ctx)
    idx = others(tensors, ctx)
    if not idx:
        return base
    b = up(base)
    w = [float(per_model[i]["weight"]) for i in idx]
    weights = torch.tensor(w, dtype=b.dtype, device=b.device).view(-1, *[1] * b.dim())
    taus = torch.stack([up(tensors[i]) - b for i in idx]) * weights
    merged = _merged_ties(taus, weights, per_model, idx) if ties else taus.sum(dim=0)
    keep = consensus_mask(taus, merged, float(params["mask_lambda"]), int(params["k"]))
    return finish(b + float(params["lambda"]) * (merged * keep), base.dtype)


def _check(params: Mapping[str, Any], per_model: Sequence[Mapping[str, Any]], base_index: int | None) -> None:
    """Negative ``k``/``mask_lambda`` and densities outside [0, 1] mean nothing."""
    if params["k"] < 0:
        raise ParamCheckError(f"k must be >= 0, got {params['k']}")
    if params["mask_lambda"] < 0:
        raise ParamCheckError(f"mask_lambda must be >= 0, got {params['mask_lambda']}")
    for i, pm in enumerate(per_model):
        d = pm.get("density")
        if i != base_index and d is not None and not 0 <= d <= 1:
            raise ParamCheckError(f"density must lie in [0, 1], got {d}", i)


def _build(ties: bool) -> Method:
    extra = (ParamSpec("density", 0.2, per_model=True, doc="fraction of each task vector TIES keeps"),) if ties else ()
    return Method(
        name="consensus_ties" if ties else "consensus_ta",
        version=1,
        reference=_REFERENCE,
        params=(
            ParamSpec("weight", 1.0, per_model=True, doc="scale of this model's task vector"),
            *extra,
            ParamSpec("k", 2, type=int, doc="least number of TALL masks that must keep an entry"),
            ParamSpec("mask_lambda", 0.6, doc="TALL mask threshold: |tau_t| > mask_lambda * |tau_m - tau_t|"),
            ParamSpec("lambda", 1.0, doc="scale of the merged task vector"),
        ),
        merge=partial(_merge, ties),
        base=BaseRule.REQUIRED,
        min_models=2,
        embed=EmbedPolicy.BASE,
        summary=("TIES" if ties else "task arithmetic") + " keeping only entries that k tasks' TALL masks agree on",
        check=_check,
        mergekit=False,
    )


METHODS: tuple[Method, ...] = (_build(False), _build(True))
CONSENSUS_TA, CONSENSUS_TIES = METHODS
