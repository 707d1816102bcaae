"""Karcher mean: the weighted Riemannian (Fréchet) mean of the inputs' directions on the sphere.

Each input is split into its norm ``n_i`` and direction ``u_i``; the mean direction ``u`` is
found by Riemannian gradient steps ``u <- exp_u(sum_i a_i log_u(u_i))`` (at most ``max_iter``,
until the step is below ``tol``); the output is ``(sum_i a_i n_i) * u`` with ``a = w / sum(w)``.

Unlike mergekit, per-model ``weight`` (default 1) is honoured; with equal weights (every mergekit
YAML that does not set them) the result is mergekit's. A base model, when given, is one more point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mergefile._lazy import torch

from mergefile.methods._common import finish, method_error, model_param, out_dtype, up
from mergefile.methods.base import BaseRule, EmbedPolicy, MergeContext, Method, ParamCheckError, ParamSpec

_SIN_EPS = 1e-7  # log map undefined for antipodal points: they give no direction, so skip them


def _log_sum(mean: torch.Tensor, units: torch.Tensor, alphas: torch.Tensor, tol: float) -> torch.Tensor:
    """``sum_i a_i log_mean(u_i)``: the Riemannian gradient of the weighted variance."""
    dots = (units @ mean).clamp(-1.0, 1.0)
    theta = torch.acos(dots)
    sin = torch.sin(theta)
    use = (theta >= tol) & (sin > _SIN_EPS)
    coef = torch.where(use, alphas * theta / torch.where(use, sin, torch.ones_like(sin)), torch.zeros_like(sin))
    return (coef.unsqueeze(1) * (units - dots.unsqueeze(1) * mean)).sum(dim=0)


def karcher_mean(xs: torch.Tensor, alphas: torch.Tensor, max_iter: int, tol: float) -> torch.Tensor:
    """Weighted Karcher mean of the rows of ``xs`` (N, D); ``alphas`` sum to 1."""
    norms = xs.norm(dim=1)
    valid = norms > tol
    if not bool(valid.any()):
        return torch.zeros_like(xs[0])
    units = xs[valid] / norms[valid].unsqueeze(1)
    a = alphas[valid] / alphas[valid].sum()
    mean = (units * a.unsqueeze(1)).sum(dim=0)
    mean_norm = mean.norm()
    mean = units[0].clone() if mean_norm < tol else mean / mean_norm
    for _ in range(max_iter):
        step = _log_sum(mean, units, a, tol)
        step_norm = step.norm()
        if step_norm < tol:
            break
        mean = torch.cos(step_norm) * mean + torch.sin(step_norm) * (step / step_norm)
        unit_norm = mean.norm()
        if unit_norm > tol:
            mean = mean / unit_norm
    return (alphas * norms).sum() * mean


def merge(tensors: Sequence[torch.Tensor], per_model: Sequence[Mapping[str, Any]],
          params: Mapping[str, Any], ctx: MergeContext) -> torch.Tensor:
    """Weighted Karcher mean of all inputs (the base included, as in mergekit)."""
    if len(tensors) == 1:
        return tensors[0]
    w = [model_param("karcher", per_model[i], "weight", i, ctx) for i in range(len(tensors))]
    if min(w) < 0 or sum(w) <= 0:
        raise method_error("karcher", ctx, f"weights must be >= 0 with a positive sum, got {w}")
    xs = torch.stack([up(t).reshape(-1) for t in tensors])
    alphas = torch.tensor(w, dtype=xs.dtype, device=xs.device)
    alphas = alphas / alphas.sum()
    out = karcher_mean(xs, alphas, int(params["max_iter"]), float(params["tol"]))
    return finish(out.view(tensors[0].shape), out_dtype(tensors, ctx))


def check(params: Mapping[str, Any], per_model: Sequence[Mapping[str, Any]], base_index: int | None) -> None:
    """The weight errors of :func:`merge`, raised by the planner before any tensor is read."""
    w = [pm["weight"] for pm in per_model]
    if len(w) == 1 or None in w:  # a single input is returned as it is; merge names a missing one
        return
    for i, x in enumerate(w):
        if x < 0:
            raise ParamCheckError(f"weights must be >= 0, got {x}", i)
    if sum(w) <= 0:
        raise ParamCheckError(f"weights {w} must have a positive sum")


METHOD = Method(
    name="karcher",
    version=1,
    reference="https://en.wikipedia.org/wiki/Karcher_mean",
    params=(
        ParamSpec("weight", 1.0, per_model=True, doc="this model's weight (mergekit ignores it)"),
        ParamSpec("max_iter", 10, type=int, doc="most gradient steps"),
        ParamSpec("tol", 1e-5, doc="stop when a step is shorter than this"),
    ),
    merge=merge,
    base=BaseRule.OPTIONAL,
    min_models=1,
    embed=EmbedPolicy.COMMON,
    summary="Riemannian (Karcher) mean of the models on the hypersphere",
    check=check,
)
