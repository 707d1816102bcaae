"""Generalized task arithmetic: task_arithmetic, TIES, DARE, Breadcrumbs, DELLA as rows of data.

Every row is the same computation (mergekit's ``GTATask``, reference §1.3):

1. ``delta_i = x_i - base`` for every non-base model;
2. sparsify ``delta_i`` with the row's :class:`Sparsifier` (its own density, gamma, epsilon);
3. combine ``w_i * delta_i``, with or without TIES sign consensus, optionally normalized by the
   weights that took part, times ``lambda``;
4. ``base + mixed``, in the base's dtype.

Steps 1-2 are a :class:`Stage` keyed per model on (density, gamma/epsilon, rescale) only, so a
``weight`` edit reuses every selection. What the cache keeps of a stage is its :class:`Keep`
packed (one bit per entry and the rescale factor), and a rebuild applies it to ``x - base``
again: a dense sparsified delta would cost a tensor of disk per model. Rows without a sparsifier
(task_arithmetic) have no stage.

Everything is computed in the inputs' dtype, step by step as mergekit 0.1.5 does (weights are
rounded to it too), so bf16 merges give mergekit's bf16 tensors.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from mergefile._lazy import torch
from mergefile.methods import _gta_kernels
from mergefile.methods._common import factor, finish, model_param, native, others, require_base
from mergefile.methods.base import BaseRule, EmbedPolicy, MergeContext, Method, ParamCheckError, ParamSpec, Stage
from mergefile.methods.sparsify import RANDOM_SPARSIFIERS, Keep, Sparsifier, SparsifyOptions, select


class Consensus(str, enum.Enum):
    """How task vectors are combined: plain weighted sum, or TIES sign election (``sum``)."""

    NONE = "none"
    SUM = "sum"


@dataclass(frozen=True)
class GTARow:
    """One paper variant: its name, sparsifier, consensus and default normalize/rescale."""

    name: str
    sparsifier: Sparsifier | None
    consensus: Consensus
    normalize: bool
    rescale: bool
    reference: str
    summary: str
    extra: tuple[ParamSpec, ...] = ()


_GAMMA = ParamSpec("gamma", 0.01, per_model=True, doc="fraction of largest-|delta| outliers to drop")
_EPSILON = ParamSpec("epsilon", 0.15, per_model=True, doc="keep-probability spread around density")

_TIES = "https://arxiv.org/abs/2306.01708"
_DARE = "https://arxiv.org/abs/2311.03099"
_BREADCRUMBS = "https://arxiv.org/abs/2312.06795"
_DELLA = "https://arxiv.org/abs/2406.11617"

_M, _R = Sparsifier.MAGNITUDE, Sparsifier.RANDOM
_O, _D = Sparsifier.MAGNITUDE_OUTLIERS, Sparsifier.DELLA_MAGPRUNE
_N, _S = Consensus.NONE, Consensus.SUM

# name, sparsifier, consensus, normalize, rescale  (reference §1.3 table)
ROWS: tuple[GTARow, ...] = (
    GTARow(
        "task_arithmetic",
        None,
        _N,
        False,
        False,
        "https://arxiv.org/abs/2212.04089",
        "base + lambda * sum of weighted task vectors",
    ),
    GTARow("ties", _M, _S, True, False, _TIES, "top-k magnitude trim, sign election, disjoint mean of task vectors"),
    GTARow("dare_ties", _R, _S, False, True, _DARE, "random drop-and-rescale of task vectors, then TIES sign election"),
    GTARow("dare_linear", _R, _N, False, True, _DARE, "random drop-and-rescale of task vectors, then a weighted sum"),
    GTARow(
        "breadcrumbs",
        _O,
        _N,
        False,
        False,
        _BREADCRUMBS,
        "drop largest outliers and smallest entries of task vectors, then a weighted sum",
        (_GAMMA,),
    ),
    GTARow(
        "breadcrumbs_ties",
        _O,
        _S,
        False,
        False,
        _BREADCRUMBS,
        "breadcrumbs sparsification, then TIES sign election",
        (_GAMMA,),
    ),
    GTARow(
        "della",
        _D,
        _S,
        True,
        True,
        _DELLA,
        "magnitude-ranked random pruning (MagPrune), then TIES sign election",
        (_EPSILON,),
    ),
    GTARow(
        "della_linear",
        _D,
        _N,
        False,
        True,
        _DELLA,
        "magnitude-ranked random pruning (MagPrune), then a weighted sum",
        (_EPSILON,),
    ),
)


def _stage_keep(kind: Sparsifier, delta: torch.Tensor, params: Mapping[str, Any], ctx: MergeContext) -> Keep:
    """What one model's sparsifier keeps of its task vector."""
    opts = SparsifyOptions(
        density=float(params["density"]),
        rescale=bool(params["rescale"]),
        gamma=float(params.get("gamma", 0.01)),
        epsilon=float(params.get("epsilon", 0.15)),
        generator=ctx.generator,
    )
    return select(delta, kind, opts)


def _stage_split(
    kind: Sparsifier, x: torch.Tensor, base: torch.Tensor, params: Mapping[str, Any], ctx: MergeContext
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One model's sparsified task vector (input dtype) and its packed selection."""
    delta = native(x) - native(base)
    keep = _stage_keep(kind, delta, params, ctx)
    packed = keep.pack()
    if packed is not None and (keep.scale is None or keep.scale.dtype == x.dtype) and _gta_kernels.available((x, base)):
        fused = _gta_kernels.masked_delta(x, base, packed.numpy(), keep.scale)
        if fused is not None:
            return fused, packed
    return keep.apply(delta), packed


def _stage_fn(
    kind: Sparsifier, x: torch.Tensor, base: torch.Tensor, params: Mapping[str, Any], ctx: MergeContext
) -> torch.Tensor:
    """One model's sparsified task vector, in the input dtype."""
    return _stage_split(kind, x, base, params, ctx)[0]


def _stage_apply(x: torch.Tensor, base: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """The sparsified task vector again, from a cached packed selection."""
    if _gta_kernels.available((x, base)):
        scale = Keep.packed_scale(packed, x)
        if scale is None or scale.dtype == x.dtype:
            fused = _gta_kernels.masked_delta(x, base, packed.numpy(), scale)
            if fused is not None:
                return fused
    delta = native(x) - native(base)
    return Keep.unpack(packed, delta).apply(delta)


# A combiner gets the stacked weighted deltas (N, ...) — a fresh tensor it may overwrite, to
# keep peak memory near one stack — and the weights shaped (N, 1, ...).


def _combine_plain(weighted: torch.Tensor, weights: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Weighted sum; normalized by the weight sum unless it is ~0 (mergekit's guard)."""
    mixed = weighted.sum(dim=0)
    if normalize:
        divisor = weights.sum(dim=0)
        mixed = mixed / (divisor if divisor.abs() >= 1e-8 else torch.ones_like(divisor))
    return mixed


def _combine_sum(weighted: torch.Tensor, weights: torch.Tensor, normalize: bool) -> torch.Tensor:
    """TIES: elect a sign per entry from the weighted sum (ties go to +), keep agreeing entries.

    Exact zeros never agree with a ±1 majority, so they leave the element-wise divisor too.
    """
    total = weighted.sum(dim=0)
    if weighted.dtype.is_floating_point and bool(torch.isfinite(total.abs().amax())):
        return _combine_sum_finite(weighted, weights, normalize, total)
    one = torch.ones((), dtype=weighted.dtype, device=weighted.device)
    majority = torch.where(total >= 0, one, -one)
    mask = (torch.sign(weighted) == majority).to(weighted.dtype)
    mixed = weighted.mul_(mask).sum(dim=0)
    if normalize:
        divisor = (weights * mask).sum(dim=0)
        mixed = mixed / torch.where(divisor == 0, torch.ones_like(divisor), divisor)
    return mixed


def _combine_sum_finite(
    weighted: torch.Tensor, weights: torch.Tensor, normalize: bool, total: torch.Tensor
) -> torch.Tensor:
    """:func:`_combine_sum` when every weighted delta is finite (a NaN or inf makes ``total``
    non-finite), in fewer and cheaper kernels, giving the same bits.

    ``w * majority`` flips signs exactly, so an entry agrees iff that product is > 0, which for a
    finite float is its bits read as a signed integer being > 0 (``-0.0`` is negative there).
    Masks are 0/1 in the deltas' dtype (:func:`factor`), and ``divisor + (divisor == 0)`` is
    mergekit's zero guard without a select.
    """
    itype = getattr(torch, {2: "int16", 4: "int32", 8: "int64"}[weighted.element_size()])
    majority = factor(total >= 0, weighted.dtype).mul_(2).sub_(1)
    agree = torch.empty(weighted.shape, dtype=torch.bool, device=weighted.device)
    for i in range(weighted.shape[0]):  # row by row: a broadcast product is a slower kernel
        torch.gt(torch.mul(weighted[i], majority).view(itype), 0, out=agree[i])
    mask = factor(agree, weighted.dtype)
    mixed = weighted.mul_(mask).sum(dim=0)
    if normalize:
        for i in range(mask.shape[0]):
            mask[i].mul_(weights[i])
        divisor = mask.sum(dim=0)
        mixed = mixed / divisor.add_(factor(divisor == 0, divisor.dtype))
    return mixed


COMBINERS: dict[Consensus, Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]] = {
    Consensus.NONE: _combine_plain,
    Consensus.SUM: _combine_sum,
}


def _stack_deltas(
    tensors: Sequence[torch.Tensor], idx: list[int], base: torch.Tensor, staged: bool, consume: bool
) -> torch.Tensor:
    """The task vectors stacked (N, ...), in the base's compute dtype.

    Staged inputs already are task vectors; with ``consume`` (``ctx.consume_inputs``) a list's
    entries are dropped once copied, so the peak holds one stack rather than the stage outputs
    and their stack. Unstaged inputs are subtracted straight into the stack.
    """
    out = torch.empty((len(idx), *base.shape), dtype=base.dtype, device=base.device)
    for j, i in enumerate(idx):
        if staged:
            out[j].copy_(native(tensors[i]))
            if consume and isinstance(tensors, list):
                tensors[i] = None
        else:
            torch.sub(native(tensors[i]), base, out=out[j])
    return out


def _merge(
    row: GTARow,
    tensors: Sequence[torch.Tensor],
    per_model: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    ctx: MergeContext,
) -> torch.Tensor:
    """Combine the (staged) task vectors and add them back to the base."""
    base = require_base(row.name, tensors, ctx)
    idx = others(tensors, ctx)
    if not idx:
        return base
    base_w = native(base)
    w = [model_param(row.name, per_model[i], "weight", i, ctx) for i in idx]
    lam = float(params["lambda"])
    staged = row.sparsifier is not None
    inputs = [tensors[i] for i in idx]
    if _gta_kernels.available((base, *inputs)) and all(t.shape == base.shape for t in inputs):
        fused = _gta_kernels.combine(
            inputs, not staged, base, w, row.consensus is Consensus.SUM, bool(params["normalize"]), lam
        )
        if fused is not None:
            return fused
    del inputs
    deltas = _stack_deltas(tensors, idx, base_w, staged, ctx.consume_inputs)
    weights = torch.tensor(w, dtype=deltas.dtype, device=deltas.device).view(-1, *[1] * (deltas.dim() - 1))
    for j in range(deltas.shape[0]):  # row by row: a broadcast product is a slower CPU kernel
        deltas[j].mul_(weights[j])
    mixed = COMBINERS[row.consensus](deltas, weights, bool(params["normalize"]))
    if lam != 1.0:
        mixed = mixed * lam
    return finish(base_w + mixed, base.dtype)


def _merge_bits(
    row: GTARow,
    inputs: Sequence,
    compact: Mapping[int, Any],
    per_model: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    ctx: MergeContext,
):
    """:func:`_merge` on bf16 bits from cached stage masks: the same kernels, no torch."""
    if ctx.base_index is None or not _gta_kernels.available_bits(len(inputs)):
        return None
    base = inputs[ctx.base_index]
    idx = others(inputs, ctx)
    if not idx:
        return base.copy()
    w = [model_param(row.name, per_model[i], "weight", i, ctx) for i in idx]
    elect, normalize, lam = row.consensus is Consensus.SUM, bool(params["normalize"]), float(params["lambda"])
    xs = [inputs[i] for i in idx]
    if row.sparsifier is None:
        return _gta_kernels.combine_bits(xs, True, base, w, elect, normalize, lam)
    scales = [_gta_kernels.packed_scale_bits(compact[i]) for i in idx]
    if any(s is False for s in scales):  # a float32 rescale: the torch steps
        return None
    packed = [compact[i] for i in idx]
    return _gta_kernels.combine_masked_bits(xs, base, packed, scales, w, elect, normalize, lam)


def _params(row: GTARow) -> tuple[ParamSpec, ...]:
    return (
        ParamSpec("weight", per_model=True, doc="scale of this model's task vector"),
        ParamSpec("density", 1.0, per_model=True, doc="fraction of task-vector entries kept"),
        *row.extra,
        ParamSpec("normalize", row.normalize, type=bool, doc="divide by the sum of weights"),
        ParamSpec("rescale", row.rescale, type=bool, doc="restore each pruned delta's L1 norm"),
        ParamSpec("lambda", 1.0, doc="scale of the merged task vector"),
        ParamSpec("int8_mask", False, type=bool, doc="accepted for mergekit compatibility; no effect"),
    )


def _stage(row: GTARow) -> Stage | None:
    if row.sparsifier is None:
        return None
    names = ("density", *(p.name for p in row.extra), "rescale")
    return Stage(
        "sparsify",
        names,
        partial(_stage_fn, row.sparsifier),
        random=row.sparsifier in RANDOM_SPARSIFIERS,
        split=partial(_stage_split, row.sparsifier),
        apply=_stage_apply,
    )


def _check(
    row: GTARow, params: Mapping[str, Any], per_model: Sequence[Mapping[str, Any]], base_index: int | None
) -> None:
    """Sparsifier parameters out of range (reference §1.4), caught before any tensor is read.

    Negative density/gamma/epsilon have no meaning; DELLA needs ``0 < density ± epsilon < 1``
    whenever it prunes at all (density >= 1 keeps everything, density 0 drops everything).
    """
    if row.sparsifier is None:
        return
    for i, pm in enumerate(per_model):
        if i == base_index:
            continue
        for name in ("density", "gamma", "epsilon"):
            if pm.get(name) is not None and pm[name] < 0:
                raise ParamCheckError(f"{name} must be >= 0, got {pm[name]}", i)
        d, eps = pm.get("density"), pm.get("epsilon")
        if row.sparsifier is Sparsifier.DELLA_MAGPRUNE and d is not None and eps is not None and 0 < d < 1:
            if not (d - eps > 0 and d + eps < 1):
                raise ParamCheckError(
                    f"density ± epsilon must lie in (0, 1), got density={d}, epsilon={eps}",
                    i,
                    hint="lower epsilon, or move density away from 0 and 1",
                )


def build(row: GTARow) -> Method:
    """The :class:`Method` for one row."""
    return Method(
        name=row.name,
        version=2,  # 2: computed in the inputs' dtype, as mergekit 0.1.5
        reference=row.reference,
        params=_params(row),
        merge=partial(_merge, row),
        base=BaseRule.REQUIRED,
        min_models=2,
        embed=EmbedPolicy.BASE,
        stage=_stage(row),
        summary=row.summary,
        check=partial(_check, row),
        warm=_gta_kernels.WARM,
        bits=partial(_merge_bits, row),
    )


METHODS: tuple[Method, ...] = tuple(build(r) for r in ROWS)
(TASK_ARITHMETIC, TIES, DARE_TIES, DARE_LINEAR, BREADCRUMBS, BREADCRUMBS_TIES, DELLA, DELLA_LINEAR) = METHODS
