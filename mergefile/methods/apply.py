"""The one way to run a method: resolved parameters, each non-base model's stage, then merge.

``run_method`` is the core every caller shares: the executor (``run/compute.py``, hence the Ray
workers and evolve's in-memory candidates, which compute through it), ``apply_method`` (tests,
notebooks, in-memory trials) and the tests' expected values. It takes parameters already
resolved (the planner resolves them once per tensor; ``apply_method`` once with
``with_defaults``) and leaves one thing to its caller: how a stage's result is obtained, as a
``StageRunner`` — computed with a generator seeded from the node's (``SeededStages``, the
in-memory default) or, in a build, seeded by the stage's content key and kept in the blob cache
(``run/compute.KeyedStages``). A method never touches files, caches or devices; neither does this.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from mergefile._lazy import torch
from mergefile.errors import ConfigError
from mergefile.methods.base import REQUIRED, MergeContext, Method


def with_defaults(
    method: Method, per_model: Sequence[Mapping[str, Any]], params: Mapping[str, Any], base_index: int | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
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


def stage_params(method: Method, model: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters one model's stage receives: its per-model values, else the global ones.

    The one definition: the stage runs with it and its content key (``run/plan_keys.stage_plan``)
    covers it, so the two can never disagree.
    """
    assert method.stage is not None
    return {n: model[n] if n in model else params.get(n) for n in method.stage.params}


def has_stages(method: Method, n_inputs: int, base_index: int | None) -> bool:
    """Whether a merge of ``n_inputs`` runs per-model stages (a staged method with a base and another input)."""
    return method.stage is not None and base_index is not None and n_inputs > 1


class StageRunner(Protocol):
    """How input ``i``'s stage output is obtained.

    ``ctx`` carries the tensor name, embedding flag and base index but no generator: the runner
    seeds one (its choice is what makes stage outputs reproducible) or reads a cached result.
    """

    def __call__(
        self, method: Method, i: int, x: torch.Tensor, base: torch.Tensor, params: Mapping[str, Any], ctx: MergeContext
    ) -> torch.Tensor: ...


def _stage_generator(parent: torch.Generator | None) -> torch.Generator | None:
    """An independent generator per stage call, derived deterministically from the node's."""
    if parent is None:
        return None
    seed = int(torch.randint(0, 2**62, (1,), generator=parent).item())
    return torch.Generator().manual_seed(seed)


class SeededStages:
    """Stages computed in memory, each seeded from ``parent`` in input order (None: unseeded).

    The draws advance ``parent``, which the merge then uses as it is.
    """

    def __init__(self, parent: torch.Generator | None):
        self.parent = parent

    def __call__(self, method, i, x, base, params, ctx):
        assert method.stage is not None
        return method.stage.fn(x, base, params, replace(ctx, generator=_stage_generator(self.parent)))


def run_method(
    method: Method,
    tensors: list[torch.Tensor],
    per_model: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    ctx: MergeContext,
    stages: StageRunner | None = None,
) -> torch.Tensor:
    """Merge ``tensors`` with resolved ``per_model``/``params``: stage each non-base input, then merge.

    ``stages`` obtains each stage output (default ``SeededStages(ctx.generator)``). With
    ``ctx.consume_inputs`` the caller hands over ``tensors``: stage outputs replace their inputs
    in that very list and the merge may drop entries from it; otherwise the list is left as given.
    """
    inputs = tensors if ctx.consume_inputs else list(tensors)
    b = ctx.base_index
    if has_stages(method, len(inputs), b):
        run = stages if stages is not None else SeededStages(ctx.generator)
        stage_ctx = MergeContext(ctx.tensor_name, ctx.is_embed, b, None)
        for i in range(len(inputs)):
            if i != b:
                inputs[i] = run(method, i, inputs[i], inputs[b], stage_params(method, per_model[i], params), stage_ctx)
    return method.merge(inputs, per_model, params, ctx)


def apply_method(
    method: Method,
    tensors: Sequence[torch.Tensor],
    per_model: Sequence[Mapping[str, Any]] | None = None,
    params: Mapping[str, Any] | None = None,
    ctx: MergeContext | None = None,
    stages: StageRunner | None = None,
) -> torch.Tensor:
    """Merge ``tensors`` with ``method`` in memory: fill defaults, check, then ``run_method``.

    Example:
        >>> from mergefile.methods import get_method
        >>> out = apply_method(get_method("linear"), [a, b], [{"weight": 1}, {"weight": 3}])
    """
    ctx = ctx or MergeContext(tensor_name="tensor")
    models, glob = with_defaults(method, per_model or [{} for _ in tensors], params or {}, ctx.base_index)
    if method.check is not None:  # the planner's check, so in-memory trials fail the same way
        method.check(glob, models, ctx.base_index)
    if method.stage is not None and ctx.base_index is None:
        raise ConfigError(f"{method.name}: needs a base model")
    return run_method(method, list(tensors), models, glob, ctx, stages)
