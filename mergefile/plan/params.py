"""Parameter resolution: precedence levels, tensor-name filters, layer gradients.

Semantics follow mergekit (reference §2.5): within one level, filtered entries are tried in
order (a filter matches when it is a substring of the tensor name), then the unfiltered entry;
the first level that yields a value wins. A list value is a gradient over the layers of a
slice, interpolated piecewise-linearly at ``t = idx / (L - 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mergefile.errors import ConfigError, Loc
from mergefile.methods.base import ParamSpec
from mergefile.syntax.ast import Param, Sym


@dataclass(frozen=True)
class Level:
    """One precedence level: its parameters and a label for messages ('model math', 'target')."""

    label: str
    params: tuple[Param, ...]


def pick(params: Sequence[Param], name: str, tensor: str) -> Param | None:
    """The entry of ``name`` that applies to ``tensor`` within one level, or None."""
    fallback = None
    for p in params:
        if p.name != name:
            continue
        if p.filter in (None, "*"):
            fallback = p  # the later unfiltered entry wins (a block line restating a call keyword)
        elif p.filter in tensor:
            return p
    return fallback


def gradient_value(values: tuple, t: float, loc: Loc | None = None) -> Any:
    """Evaluate a gradient list at ``t`` in [0, 1] exactly as mergekit does."""
    if not values:
        raise ConfigError("empty list where a value or gradient was expected", loc)
    n = len(values)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        s = t * (n - 1)
        i0 = min(n - 1, int(math.floor(s)))
        i1 = min(n - 1, i0 + 1)
        frac = s - i0
        return (1 - frac) * values[i0] + frac * values[i1]
    return values[int(t * (n - 1))]


def layer_t(index_in_slice: int | None, slice_len: int) -> float:
    """Gradient position of a tensor: 0 for pre/post-layer tensors, idx/(L-1) in a slice."""
    if index_in_slice is None:
        return 0.0
    if slice_len <= 1:
        return 1.0
    return index_in_slice / (slice_len - 1)


def substitute(value: Any, variables: Mapping[str, Any]) -> Any:
    """Replace bare names that are file-level variables by their values (recursively in lists)."""
    if isinstance(value, Sym) and value.name in variables:
        return variables[value.name]
    if isinstance(value, tuple):
        return tuple(substitute(v, variables) for v in value)
    return value


def coerce(spec: ParamSpec, value: Any, loc: Loc | None, where: str) -> Any:
    """Check and normalise a resolved scalar against the parameter's declared type."""
    want = spec.type
    if isinstance(value, Sym):
        value = value.name if want is str else value
    ok = False
    if want is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
            if not math.isfinite(value):
                ok = False
    elif want is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif want is bool:
        ok = isinstance(value, bool)
    elif want is str:
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        kind = {float: "a number", int: "an integer", bool: "true or false", str: "a word or string"}.get(
            want, str(want)
        )
        raise ConfigError(f"parameter '{spec.name}' must be {kind}, got {value!r} ({where})", loc)
    return value


def resolve(
    spec: ParamSpec,
    levels: Sequence[Level],
    tensor: str,
    t: float,
    variables: Mapping[str, Any],
    *,
    required: bool = True,
    where: str = "",
    loc: Loc | None = None,
) -> Any:
    """Resolve one parameter for one tensor through the precedence levels.

    Returns the method default when no level sets it; raises when it is required and unset
    (``required`` is False for a base model's per-model parameters, which may stay None),
    located at ``loc`` (the model line or target the value was expected on).
    """
    for level in levels:
        p = pick(level.params, spec.name, tensor)
        if p is None:
            continue
        value = substitute(p.value, variables)
        if isinstance(value, tuple):
            value = gradient_value(value, t, p.loc)
        return coerce(spec, value, p.loc, where or level.label)
    if not spec.required:
        return spec.default
    if not required:
        return None
    raise ConfigError(
        f"missing required parameter '{spec.name}' {where} for tensor '{tensor}'",
        loc,
        hint=f"set {spec.name}=... on the model line, or once for all models on the target"
        if spec.per_model
        else f"set {spec.name}=... on the target or its slice",
    )
