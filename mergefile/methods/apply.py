"""Run a method in-process exactly as the contract describes: defaults, stage, then merge.

The executor does the same with caching in between (and seeds each stage by its own content
key); this helper is for tests, notebooks and evolve-style in-memory trials.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mergefile._lazy import torch

from mergefile.errors import ConfigError
from mergefile.methods.base import REQUIRED, MergeContext, Method


def with_defaults(method: Method, per_model: Sequence[Mapping[str, Any]], params: Mapping[str, Any],
                  base_index: int | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Fill declared defaults; a missing required value is an error (None for the base)."""
    glob = dict(params)
    for p in method.global_params:
        if p.name not in glob:
            if p.required:
                raise ConfigError(f"{method.name}: parameter '{p.name}' is required")
            glob[p.name] = p.default
    models = []
    for i, given in enumerate(per_model):
        entry = dict(given)
        for p in method.model_params:
            if p.name not in entry:
                if p.default is REQUIRED and i != base_index:
                    raise ConfigError(f"{method.name}: input #{i + 1} needs '{p.name}'")
                entry[p.name] = None if p.default is REQUIRED else p.default
        models.append(entry)
    return models, glob


def _stage_generator(parent: torch.Generator | None) -> torch.Generator | None:
    """An independent generator per stage call, derived deterministically from the node's."""
    if parent is None:
        return None
    seed = int(torch.randint(0, 2**62, (1,), generator=parent).item())
    return torch.Generator().manual_seed(seed)


def apply_method(method: Method, tensors: Sequence[torch.Tensor],
                 per_model: Sequence[Mapping[str, Any]] | None = None,
                 params: Mapping[str, Any] | None = None,
                 ctx: MergeContext | None = None) -> torch.Tensor:
    """Merge ``tensors`` with ``method``: fill defaults, run the stage per non-base model, merge.

    Example:
        >>> from mergefile.methods import get_method
        >>> out = apply_method(get_method("linear"), [a, b], [{"weight": 1}, {"weight": 3}])
    """
    ctx = ctx or MergeContext(tensor_name="tensor")
    models, glob = with_defaults(method, per_model or [{} for _ in tensors], params or {}, ctx.base_index)
    if method.check is not None:  # the planner's check, so in-memory trials fail the same way
        method.check(glob, models, ctx.base_index)
    inputs = list(tensors)
    if method.stage is not None:
        if ctx.base_index is None:
            raise ConfigError(f"{method.name}: needs a base model")
        base = tensors[ctx.base_index]
        for i, x in enumerate(tensors):
            if i == ctx.base_index:
                continue
            values = {**glob, **models[i]}
            stage_params = {name: values[name] for name in method.stage.params}
            stage_ctx = MergeContext(ctx.tensor_name, ctx.is_embed, ctx.base_index,
                                     _stage_generator(ctx.generator))
            inputs[i] = method.stage.fn(x, base, stage_params, stage_ctx)
    return method.merge(inputs, models, glob, ctx)
