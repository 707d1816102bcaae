"""Passthrough: copy one input tensor, optionally scaled — the workhorse of frankenmerges."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mergefile._lazy import torch
from mergefile.methods._common import finish, method_error, up
from mergefile.methods.base import BaseRule, EmbedPolicy, MergeContext, Method, ParamSpec


def merge(
    tensors: Sequence[torch.Tensor],
    per_model: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    ctx: MergeContext,
) -> torch.Tensor:
    """The single input, times ``scale`` when one is set."""
    if len(tensors) != 1:
        raise method_error(
            "passthrough",
            ctx,
            f"takes exactly one input, got {len(tensors)}",
            "use slices to pick one source per layer",
        )
    scale = per_model[0].get("scale")
    if scale is None:
        return tensors[0]
    return finish(up(tensors[0]) * float(scale), tensors[0].dtype)


METHOD = Method(
    name="passthrough",
    version=1,
    reference="https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md",
    params=(ParamSpec("scale", None, per_model=True, doc="multiply the tensor by this"),),
    merge=merge,
    base=BaseRule.IGNORED,
    min_models=1,
    max_models=1,
    embed=EmbedPolicy.EXACT,
    summary="copy one model's tensor unchanged (optionally scaled)",
)
