"""PCB merging: parameter competition balancing (Du et al., NeurIPS 2024).

Per tensor, with task vectors ``tau_i = x_i - base`` (T of them, n entries each):

1. clip each ``|tau_i|`` to its own ``[q(eps), q(1 - eps)]`` order statistics (``eps = 1e-4``:
   entries ``int(n eps)`` and ``int(n (1 - eps)) - 1`` of the sorted values), keeping signs;
2. intra-balancing, how much an entry matters to its task: ``exp(T * mm(|tau_i|)^2)``, where
   ``mm`` min-max normalizes over the task's entries;
3. inter-balancing, how far the other tasks agree: ``tanh(tau_i * sum_j tau_j)``;
4. their product ``beta_i`` is clipped below at its ``1 - pcb_ratio`` order statistic and
   min-max normalized: all but the top ``pcb_ratio`` of each task's entries get weight 0;
5. ``out = base + sum_i w_i beta_i tau_i / sum_i beta_i`` (``w_i`` the paper's per-task ``lambda``).

The paper flattens the whole model into one vector per task; here every tensor is its own
(as TIES is per tensor in mergekit), which also keeps memory to a few copies of one tensor. A
task whose entries are all equal (a zero task vector) has no spread to normalize: its weights
are 0 where the paper's code divides by zero. Computed in float32 for half-precision inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mergefile._lazy import torch
from mergefile.methods._common import finish, others, require_base, up
from mergefile.methods.base import BaseRule, EmbedPolicy, MergeContext, Method, ParamCheckError, ParamSpec

CLIP = 1e-4  # the paper's outlier share clipped at each end of |tau_i|


def order_stat(rows: torch.Tensor, share: float) -> torch.Tensor:
    """Per row the sorted value at index ``int(n * share)`` (``share`` 1: the last), shaped (T, 1)."""
    n = rows.shape[1]
    i = min(int(n * share), n - 1)
    return rows.kthvalue(i + 1, dim=1, keepdim=True).values


def minmax(rows: torch.Tensor) -> torch.Tensor:
    """Per row ``(x - min) / (max - min)``; 0 for a row without spread."""
    lo, hi = rows.min(dim=1, keepdim=True).values, rows.max(dim=1, keepdim=True).values
    span = hi - lo
    return torch.where(
        span > 0, (rows - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(rows)
    )


def balance(taus: torch.Tensor, pcb_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(clipped task vectors, their balancing weights ``beta``), both (T, n)."""
    mag = taus.abs()
    n = mag.shape[1]
    lo = order_stat(mag, CLIP)
    hi = mag.kthvalue(max(int(n * (1 - CLIP)), 1), dim=1, keepdim=True).values  # index int(n(1-eps)) - 1
    mag = torch.maximum(torch.minimum(mag, hi), lo)
    clipped = torch.sign(taus) * mag
    intra = torch.exp(taus.shape[0] * minmax(mag) ** 2)
    inter = torch.tanh(taus * taus.sum(dim=0, keepdim=True))
    score = intra * inter
    beta = minmax(torch.maximum(score, order_stat(score, 1 - pcb_ratio)))
    return clipped, beta


def merge(
    tensors: Sequence[torch.Tensor],
    per_model: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    ctx: MergeContext,
) -> torch.Tensor:
    """``base + sum_i w_i beta_i tau_i / sum_i beta_i`` (module docstring)."""
    base = require_base("pcb", tensors, ctx)
    idx = others(tensors, ctx)
    if not idx:
        return base
    b = up(base)
    taus = torch.stack([(up(tensors[i]) - b).reshape(-1) for i in idx])
    clipped, beta = balance(taus, float(params["pcb_ratio"]))
    w = torch.tensor([float(per_model[i]["weight"]) for i in idx], dtype=b.dtype, device=b.device).unsqueeze(1)
    merged = (clipped * w * beta).sum(dim=0) / beta.sum(dim=0).clamp(min=1e-12)
    return finish(b + merged.view(b.shape), base.dtype)


def _check(params: Mapping[str, Any], per_model: Sequence[Mapping[str, Any]], base_index: int | None) -> None:
    """``pcb_ratio`` is the share of entries each task keeps."""
    r = params["pcb_ratio"]
    if not 0 < r <= 1:
        raise ParamCheckError(f"pcb_ratio must lie in (0, 1], got {r}")


METHOD = Method(
    name="pcb",
    version=1,
    reference="https://arxiv.org/abs/2410.02396",
    params=(
        ParamSpec("weight", 1.0, per_model=True, doc="this task's coefficient (the paper's lambda_i)"),
        ParamSpec("pcb_ratio", 0.1, doc="share of each task vector's entries kept, by balanced score"),
    ),
    merge=merge,
    base=BaseRule.REQUIRED,
    min_models=2,
    embed=EmbedPolicy.BASE,
    summary="task vectors weighted by intra- and inter-task competition scores, top share kept",
    check=_check,
    mergekit=False,
)
