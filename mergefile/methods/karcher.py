"""Karcher mean: the weighted Riemannian (Fréchet) mean of the inputs' directions on the sphere.

Each input is split into its norm ``n_i`` and direction ``u_i``; the mean direction ``u`` is
found by Riemannian gradient steps ``u <- exp_u(sum_i a_i log_u(u_i))`` (at most ``max_iter``,
until the step is below ``tol``); the output is ``(sum_i a_i n_i) * u`` with ``a = w / sum(w)``.

Computed as mergekit 0.1.5 does, so a bf16 merge gives its bits: the directions, the mean and
every step stay in the inputs' dtype (rounded after each operation), the norms are float32
(float64 for float64 inputs) 0-dim tensors, the coefficients are Python floats, and the sums run
model by model in input order. Unlike mergekit, per-model ``weight`` (default 1) is honoured;
with equal weights (every mergekit YAML, which cannot set them) the coefficients are mergekit's
``1/n``. A base model, when given, is one more point. The one other difference: a direction
exactly opposite the mean (``sin θ <= 1e-7``) has no log map and is skipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mergefile._lazy import torch
from mergefile.methods._common import finish, method_error, model_param, native, out_dtype
from mergefile.methods.base import BaseRule, EmbedPolicy, MergeContext, Method, ParamCheckError, ParamSpec

_SIN_EPS = 1e-7  # log map undefined for antipodal points: they give no direction, so skip them


def _norm(x: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """The 2-norm of all of ``x``, a 0-dim tensor in the accumulation dtype ``acc``."""
    return torch.linalg.vector_norm(x.to(acc))


def _scaled_to_unit(x: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """``x / norm`` in ``x``'s dtype (a 0-dim wider norm does not promote)."""
    return (x / norm).to(x.dtype)


def _log_sum(mean: torch.Tensor, units: Sequence[torch.Tensor], alphas: Sequence[float], tol: float) -> torch.Tensor:
    """``sum_i a_i log_mean(u_i)`` in the working dtype, one model at a time."""
    flat_mean = mean.reshape(-1)
    step = torch.zeros_like(mean)
    for a, u in zip(alphas, units):
        cos = torch.dot(flat_mean, u.reshape(-1)).clamp(-1.0, 1.0)
        theta = torch.arccos(cos)
        if theta.item() < tol:
            continue  # u is the mean: no pull
        sin = torch.sin(theta)
        if cos.item() < 0 and abs(sin.item()) <= _SIN_EPS:
            continue  # antipodal: no direction to pull along
        step += (a * (theta / sin)) * (u - cos * mean)
    return step


def karcher_mean(tensors: Sequence[torch.Tensor], alphas: Sequence[float], max_iter: int, tol: float) -> torch.Tensor:
    """Weighted Karcher mean of same-dtype, same-shape tensors; ``alphas`` (floats) sum to 1."""
    acc = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
    norms = [_norm(x, acc) for x in tensors]
    kept = [i for i, n in enumerate(norms) if n.item() > tol]
    if not kept:
        return torch.zeros_like(tensors[0])
    units = [_scaled_to_unit(tensors[i], norms[i]) for i in kept]
    total = sum(alphas[i] for i in kept)
    a = [alphas[i] / total for i in kept]
    mean = torch.zeros_like(units[0])
    for ai, u in zip(a, units):
        mean += ai * u
    mean_norm = _norm(mean, acc)
    mean = units[0].clone() if mean_norm.item() < tol else _scaled_to_unit(mean, mean_norm)
    for _ in range(max_iter):
        step = _log_sum(mean, units, a, tol)
        step_norm = _norm(step, acc)
        if step_norm.item() < tol:
            break
        mean = (torch.cos(step_norm) * mean + torch.sin(step_norm) * (step / step_norm)).to(mean.dtype)
        unit_norm = _norm(mean, acc)
        if unit_norm.item() > tol:
            mean = _scaled_to_unit(mean, unit_norm)
    scale = alphas[0] * norms[0]
    for alpha, n in zip(alphas[1:], norms[1:]):
        scale = scale + alpha * n
    return scale * mean


def merge(
    tensors: Sequence[torch.Tensor],
    per_model: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    ctx: MergeContext,
) -> torch.Tensor:
    """Weighted Karcher mean of all inputs (the base included, as in mergekit)."""
    if len(tensors) == 1:
        return tensors[0]
    w = [model_param("karcher", per_model[i], "weight", i, ctx) for i in range(len(tensors))]
    if min(w) < 0 or sum(w) <= 0:
        raise method_error("karcher", ctx, f"weights must be >= 0 with a positive sum, got {w}")
    n = len(w)
    alphas = [1.0 / n] * n if len(set(w)) == 1 else [x / sum(w) for x in w]
    dtype = tensors[0].dtype
    for x in tensors[1:]:
        dtype = torch.promote_types(dtype, x.dtype)
    xs = [native(x.to(dtype)) for x in tensors]
    out = karcher_mean(xs, alphas, int(params["max_iter"]), float(params["tol"]))
    return finish(out, out_dtype(tensors, ctx))


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
    version=2,  # 2: computed in the inputs' dtype, step by step as mergekit 0.1.5 (bf16 bits equal)
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
