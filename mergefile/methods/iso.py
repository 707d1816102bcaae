"""Isotropic merging (Marczak et al., ICML 2025): iso_c and iso_cts.

Iso-C: the summed task matrix ``M = sum_t w_t tau_t`` (``tau_t = x_t - base``) has its spectrum
flattened, ``M = U S V^T -> mean(S) U V^T``, and ``out = base + alpha * that``: every direction
the tasks span gets the same weight, so no task's dominant directions drown the others'.

Iso-CTS adds task-specific directions: the top ``c`` triplets of ``M`` span the common space
(``c ~ common_space_fraction * r``, rounded so the rest splits evenly over the ``T`` tasks);
each task's ``tau_t - U_c U_c^T tau_t`` gives its top ``(r - c) / T`` triplets; all bases are
concatenated, orthogonalized by their polar factors, and the concatenated spectrum flattened to
its mean.

Matrices only: other tensors (norms, biases) and embeddings (vocab x hidden) take the mean of the
weighted task vectors, as the paper's code does for non-matrices and LLM ports of it do for
``embed_tokens``/``lm_head`` (flattening a vocabulary's spectrum needs its full SVD and would give
rare tokens' rows the weight of common ones). Nothing here is per model, so there is no stage:
the SVD is of the tasks' sum. Computed in float32 for half-precision inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from mergefile._lazy import torch
from mergefile.methods._common import finish, others, require_base, up
from mergefile.methods._svd import polar, svd
from mergefile.methods.base import BaseRule, EmbedPolicy, MergeContext, Method, ParamCheckError, ParamSpec


def iso_c(taus: Sequence[torch.Tensor]) -> torch.Tensor:
    """``mean(S) U V^T`` of the sum of ``taus`` (2-D)."""
    u, s, vh = svd(sum(taus[1:], taus[0]))
    return (u * s.mean()) @ vh


def spaces(r: int, tasks: int, fraction: float) -> tuple[int, int]:
    """(common rank, rank per task): the common share rounded so the rest splits evenly."""
    specific = min(round((r - int(r * fraction)) / tasks), r // tasks) * tasks  # never above r
    common = r - specific
    return common, (r - common) // tasks


def iso_cts(taus: Sequence[torch.Tensor], fraction: float) -> torch.Tensor:
    """Common subspace of the sum plus each task's own directions, orthogonalized and flattened."""
    u, s, vh = svd(sum(taus[1:], taus[0]))
    common, per_task = spaces(s.shape[0], len(taus), fraction)
    us, ss, vs = [u[:, :common]], [s[:common]], [vh[:common]]
    uc = u[:, :common]
    for tau in taus:
        ut, st, vt = svd(tau - uc @ (uc.T @ tau))
        us.append(ut[:, :per_task])
        ss.append(st[:per_task])
        vs.append(vt[:per_task])
    flat = torch.cat(ss).mean()
    return (polar(torch.cat(us, dim=1)) * flat) @ polar(torch.cat(vs, dim=0))


def _merge(
    cts: bool,
    tensors: Sequence[torch.Tensor],
    per_model: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    ctx: MergeContext,
) -> torch.Tensor:
    """``base + alpha * iso(tau_1 .. tau_T)`` (module docstring)."""
    base = require_base("iso_cts" if cts else "iso_c", tensors, ctx)
    idx = others(tensors, ctx)
    if not idx:
        return base
    b = up(base)
    taus = [float(per_model[i]["weight"]) * (up(tensors[i]) - b) for i in idx]
    if b.dim() != 2 or ctx.is_embed:
        merged = sum(taus[1:], taus[0]) / len(taus)
    elif cts:
        merged = iso_cts(taus, float(params["common_space_fraction"]))
    else:
        merged = iso_c(taus)
    return finish(b + float(params["alpha"]) * merged, base.dtype)


def _check(params: Mapping[str, Any], per_model: Sequence[Mapping[str, Any]], base_index: int | None) -> None:
    """The common share is a fraction of the rank."""
    f = params.get("common_space_fraction")
    if f is not None and not 0 <= f <= 1:
        raise ParamCheckError(f"common_space_fraction must lie in [0, 1], got {f}")


def _build(cts: bool) -> Method:
    extra = (ParamSpec("common_space_fraction", 0.8, doc="share of the rank given to the common space"),) if cts else ()
    return Method(
        name="iso_cts" if cts else "iso_c",
        version=2,  # 2: factorizations on one CPU thread (the same bits on Ray)
        reference="https://arxiv.org/abs/2502.04959",
        params=(
            ParamSpec("weight", 1.0, per_model=True, doc="scale of this model's task vector"),
            *extra,
            ParamSpec("alpha", 1.0, doc="scale of the merged task vector"),
        ),
        merge=partial(_merge, cts),
        base=BaseRule.REQUIRED,
        min_models=2,
        embed=EmbedPolicy.BASE,
        summary=("common and task-specific subspaces, " if cts else "summed task matrix, ")
        + "spectrum flattened to its mean singular value",
        check=_check,
        mergekit=False,
    )


METHODS: tuple[Method, ...] = (_build(False), _build(True))
ISO_C, ISO_CTS = METHODS
