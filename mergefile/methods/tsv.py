"""Task Singular Vectors merge, TSV-M (Gargiulo et al., CVPR 2025).

Per 2-D weight, each task vector ``tau_t = x_t - base`` is cut to its top ``k = int(r * s)``
singular triplets (``r = min(m, n)``, share ``s = sv_reduction``, by default ``1/T`` for ``T``
tasks); the triplets are concatenated, ``U = [U_1 .. U_T]``, ``S = [w_1 S_1 .. w_T S_T]``,
``V = [V_1 .. V_T]``; the bases are orthogonalized by their polar factors (``U = P D Q^T`` ->
``P Q^T``, likewise ``V``), and ``out = base + alpha * U_perp diag(S) V_perp^T``. Other tensors
(norms, biases) fall back to the mean of the weighted task vectors, as the paper's code does.

Each task's truncated SVD is a :class:`Stage`, cached per model and keyed by its input, the base
and ``sv_reduction``: editing ``weight`` or ``alpha`` reruns only the two polar factors. A stage
cannot know ``T``, so with ``sv_reduction = 0`` (the paper's ``1/T``) it keeps ``int(r / 2)``
triplets, every one that ``T >= 2`` tasks use; a single task then also uses ``1/2`` (set
``sv_reduction = 1`` for the task vector itself). Embeddings (vocab x hidden) take a seeded
randomized SVD (``_svd.randomized_svd``; exact ones cost ``O(vocab * hidden^2)``), drawn
from the generator the build seeds with the stage's own key, so it needs no recipe seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mergefile._lazy import torch
from mergefile.methods._common import finish, others, require_base, up
from mergefile.methods._svd import pack, polar, randomized_svd, thin_svd, unpack
from mergefile.methods.base import BaseRule, EmbedPolicy, MergeContext, Method, ParamCheckError, ParamSpec, Stage

# the stage's share when sv_reduction is 0 (1/T): enough for every T >= 2
STAGE_SHARE = 0.5


def _share(sv_reduction: float, tasks: int | None) -> float:
    """The share of singular triplets kept per task (``tasks`` None: what the stage keeps)."""
    if sv_reduction > 0:
        return sv_reduction
    return STAGE_SHARE if tasks is None else 1.0 / max(tasks, 2)


def stage_svd(x: torch.Tensor, base: torch.Tensor, params: Mapping[str, Any], ctx: MergeContext) -> torch.Tensor:
    """One task's truncated SVD, packed (``_svd.pack``); a non-matrix tensor's task vector itself."""
    tau = up(x) - up(base)
    if tau.dim() != 2:
        return tau
    k = int(min(tau.shape) * _share(float(params["sv_reduction"]), None))
    u, s, vh = randomized_svd(tau, k, ctx.generator) if ctx.is_embed else thin_svd(tau, k)
    return pack(u, s, vh)


def combine(
    factors: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    weights: Sequence[float],
    k: int,
    shape: tuple[int, int],
) -> torch.Tensor:
    """``U_perp diag(S) V_perp^T`` of the first ``k`` triplets of every task (module docstring)."""
    if k == 0:
        return torch.zeros(shape, dtype=factors[0][1].dtype, device=factors[0][1].device)
    u = torch.cat([f[0][:, :k] for f in factors], dim=1)
    s = torch.cat([w * f[1][:k] for f, w in zip(factors, weights)])
    vh = torch.cat([f[2][:k] for f in factors], dim=0)
    return (polar(u) * s) @ polar(vh)


def merge(
    tensors: Sequence[torch.Tensor],
    per_model: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    ctx: MergeContext,
) -> torch.Tensor:
    """``base + alpha * TSV-M(tau_1 .. tau_T)`` from the staged SVDs."""
    base = require_base("tsv", tensors, ctx)
    idx = others(tensors, ctx)
    if not idx:
        return base
    b = up(base)
    w = [float(per_model[i]["weight"]) for i in idx]
    if b.dim() != 2:
        merged = sum(wi * tensors[i].to(b.dtype) for wi, i in zip(w, idx)) / len(idx)
    else:
        rows, cols = b.shape
        k = int(min(rows, cols) * _share(float(params["sv_reduction"]), len(idx)))
        factors = [unpack(tensors[i].to(b.dtype), rows) for i in idx]
        merged = combine(factors, w, k, (rows, cols))
    return finish(b + float(params["alpha"]) * merged, base.dtype)


def _check(params: Mapping[str, Any], per_model: Sequence[Mapping[str, Any]], base_index: int | None) -> None:
    """``sv_reduction`` is a share of the rank: 0 (meaning 1/T) or in (0, 1]."""
    s = params["sv_reduction"]
    if not 0 <= s <= 1:
        raise ParamCheckError(f"sv_reduction must lie in [0, 1] (0: 1/T), got {s}")


METHOD = Method(
    name="tsv",
    version=2,  # 2: factorizations on one CPU thread (the same bits on Ray)
    reference="https://arxiv.org/abs/2412.00081",
    params=(
        ParamSpec("weight", 1.0, per_model=True, doc="scale of this model's singular values"),
        ParamSpec("sv_reduction", 0.0, doc="share of each task's singular triplets kept; 0: 1/T (the paper)"),
        ParamSpec("alpha", 1.0, doc="scale of the merged task vector"),
    ),
    merge=merge,
    base=BaseRule.REQUIRED,
    min_models=2,
    embed=EmbedPolicy.BASE,
    stage=Stage("svd", ("sv_reduction",), stage_svd),  # embeddings: generator seeded by the stage key
    summary="per task top singular vectors, orthogonalized across tasks, then summed",
    check=_check,
    mergekit=False,
)
