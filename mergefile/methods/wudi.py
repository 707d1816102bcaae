"""WUDI merging: data-free per-matrix optimization from task vectors (Cheng et al., ICML 2025).

For a 2-D weight with task vectors ``tau_i = x_i - base`` (rows are output units), the merged
task vector minimizes the interference each task's own inputs would see,

    L(t) = sum_i || (t - tau_i) tau_i^T ||_F^2 / ||tau_i||_F^2,

starting from ``sum_i tau_i``, by ``iterations`` steps of Adam (lr ``1e-5``, betas 0.9/0.999,
eps 1e-8, as the paper's code runs ``torch.optim.Adam``); ``out = base + t``. 1-D tensors take
the mean task vector, as the paper's code does.

The gradient is analytic, ``2 sum_i (t - tau_i) G_i / c_i`` with ``G_i = tau_i^T tau_i`` and
``c_i = ||tau_i||^2``: for a matrix with no more columns than rows it is ``2 (t A - B)`` with
``A = sum G_i / c_i`` (n x n) and ``B = sum tau_i G_i / c_i`` computed once, one m x n x n product
per step; a wider matrix uses the products ``((t - tau_i) tau_i^T) tau_i`` instead of an n x n
Gram. Memory stays at a few copies of the tensor (never the m x m products of the paper's code,
which would not fit for an embedding). The cost is ``iterations`` matrix products per tensor:
cheap on a GPU, minutes per large matrix on a CPU. Computed in float32.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mergefile._lazy import torch
from mergefile.methods._common import finish, others, require_base, up
from mergefile.methods.base import BaseRule, EmbedPolicy, MergeContext, Method, ParamCheckError, ParamSpec

BETAS = (0.9, 0.999)
EPS = 1e-8


def gradient(taus: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``t -> dL/dt`` for stacked task matrices ``taus`` (T, m, n)."""
    c = taus.flatten(1).square().sum(dim=1).clamp(min=1e-30)
    m, n = taus.shape[1:]
    if n <= m:
        grams = taus.transpose(1, 2) @ taus / c.view(-1, 1, 1)  # G_i / c_i, (T, n, n)
        a, b = grams.sum(dim=0), (taus @ grams).sum(dim=0)
        return lambda t: 2 * (t @ a - b)
    return lambda t: 2 * sum(((t - tau) @ tau.T) @ tau / ci for tau, ci in zip(taus, c))


def adam(t: torch.Tensor, grad: Callable[[torch.Tensor], torch.Tensor], steps: int, lr: float) -> torch.Tensor:
    """``steps`` Adam updates of ``t`` (torch.optim.Adam's arithmetic, no weight decay)."""
    m1, m2 = torch.zeros_like(t), torch.zeros_like(t)
    b1, b2 = BETAS
    for k in range(1, steps + 1):
        g = grad(t)
        m1.mul_(b1).add_(g, alpha=1 - b1)
        m2.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (m2.sqrt() / (1 - b2**k) ** 0.5).add_(EPS)
        t = t.addcdiv(m1, denom, value=-lr / (1 - b1**k))
    return t


def merge(
    tensors: Sequence[torch.Tensor],
    per_model: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    ctx: MergeContext,
) -> torch.Tensor:
    """``base + argmin L`` for matrices, ``base + mean(tau_i)`` otherwise."""
    base = require_base("wudi", tensors, ctx)
    idx = others(tensors, ctx)
    if not idx:
        return base
    b = up(base)
    taus = torch.stack([up(tensors[i]) - b for i in idx])
    if b.dim() != 2:
        return finish(b + taus.mean(dim=0), base.dtype)
    merged = adam(taus.sum(dim=0), gradient(taus), int(params["iterations"]), float(params["lr"]))
    return finish(b + merged, base.dtype)


def _check(params: Mapping[str, Any], per_model: Sequence[Mapping[str, Any]], base_index: int | None) -> None:
    """A negative step count or learning rate means nothing."""
    if params["iterations"] < 0:
        raise ParamCheckError(f"iterations must be >= 0, got {params['iterations']}")
    if params["lr"] <= 0:
        raise ParamCheckError(f"lr must be > 0, got {params['lr']}")


METHOD = Method(
    name="wudi",
    version=1,
    reference="https://arxiv.org/abs/2503.08099",
    params=(
        ParamSpec("iterations", 300, type=int, doc="Adam steps per matrix (300: the reference code's default)"),
        ParamSpec("lr", 1e-5, doc="Adam learning rate (the paper's code: 1e-5)"),
    ),
    merge=merge,
    base=BaseRule.REQUIRED,
    min_models=2,
    embed=EmbedPolicy.BASE,
    summary="per matrix, the task vector that least disturbs each task's inputs (Adam from the sum)",
    check=_check,
    mergekit=False,
)
