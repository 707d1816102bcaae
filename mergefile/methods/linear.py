"""Linear: a weighted average of the inputs (model soups).

``out = sum_i w_i x_i``, divided by ``sum_i w_i`` when ``normalize`` (default true).

The base model plays no part (mergekit crashes with a TypeError when ``base_model`` is set but
not listed among the models, §14): a base that is also listed is just one more weighted input;
a base with no weight is skipped. Weights summing to 0 under ``normalize`` are an error here
(mergekit returns inf/NaN).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mergefile._lazy import torch
from mergefile.methods._common import finish, method_error, model_param, out_dtype, up
from mergefile.methods.base import BaseRule, EmbedPolicy, MergeContext, Method, ParamCheckError, ParamSpec

_ZERO_SUM = 1e-8


def merge(
    tensors: Sequence[torch.Tensor],
    per_model: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    ctx: MergeContext,
) -> torch.Tensor:
    """Weighted (and by default normalized) sum of the inputs."""
    picked = [i for i in range(len(tensors)) if not (i == ctx.base_index and per_model[i].get("weight") is None)]
    if not picked:
        raise method_error("linear", ctx, "no input has a weight")
    w = [model_param("linear", per_model[i], "weight", i, ctx) for i in picked]
    # accumulate one input at a time: peak memory is the result plus one upcast input,
    # not a stack of all of them
    out = up(tensors[picked[0]]) * w[0]
    for i, wi in zip(picked[1:], w[1:]):
        out.add_(up(tensors[i]), alpha=wi)
    if params["normalize"]:
        total = sum(w)
        if abs(total) < _ZERO_SUM:
            raise method_error(
                "linear",
                ctx,
                f"weights {w} sum to 0 and normalize is on",
                "set normalize = false, or change the weights",
            )
        out = out.div_(total)
    return finish(out, out_dtype(tensors, ctx))


def check(params: Mapping[str, Any], per_model: Sequence[Mapping[str, Any]], base_index: int | None) -> None:
    """The zero-sum error of :func:`merge`, raised by the planner before any tensor is read."""
    w = [pm["weight"] for i, pm in enumerate(per_model) if not (i == base_index and pm.get("weight") is None)]
    if None in w:  # merge names the input without a weight
        return
    if params["normalize"] and w and abs(sum(w)) < _ZERO_SUM:
        raise ParamCheckError(
            f"weights {w} sum to 0 and normalize is on", hint="set normalize = false, or change the weights"
        )


METHOD = Method(
    name="linear",
    version=1,
    reference="https://arxiv.org/abs/2203.05482",
    params=(
        ParamSpec("weight", per_model=True, doc="this model's coefficient"),
        ParamSpec("normalize", True, type=bool, doc="divide by the sum of weights"),
    ),
    merge=merge,
    base=BaseRule.IGNORED,
    min_models=1,
    embed=EmbedPolicy.COMMON,
    summary="weighted average of the models (model soup)",
    check=check,
)
