"""Run a method's own parameter check on one planned tensor, and say where a failure is.

Methods validate resolved values (e.g. DELLA's ``0 < density ± epsilon < 1``) but know neither
model names nor recipe positions; this adds both, so the error points at the model line (or the
target) and names the tensor, before any tensor data is read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mergefile.errors import ConfigError, Loc
from mergefile.methods.base import Method, ParamCheckError
from mergefile.syntax.ast import Param, Target


def check_params(
    method: Method,
    params: Mapping[str, Any],
    per_model: Sequence[Mapping[str, Any]],
    base_index: int | None,
    models: Sequence[tuple[str, Loc | None]],
    loc: Loc | None,
    tensor: str,
    target: str,
) -> None:
    """Call ``method.check``; re-raise its error with the model, tensor, target and location.

    ``models`` holds (label, model-line location) per input, in the order of ``per_model``;
    ``loc`` is the slice's or target's location, used for errors about no single model.
    """
    if method.check is None:
        return
    try:
        method.check(params, per_model, base_index)
    except ParamCheckError as e:
        who, where = "", loc
        if e.model is not None:
            label, model_loc = models[e.model]
            who, where = f", model '{label}'", model_loc or loc
        raise ConfigError(
            f"{method.name}{who}: {e.message} (tensor '{tensor}' of target '{target}')", where, e.hint
        ) from None


def _all_params(t: Target) -> list[Param]:
    """Every parameter written in a target: its own, its models', its slices' and modules'."""
    out = list(t.params)
    for m in (t, *t.modules):
        out += [p for src in m.sources for p in src.params]
        for sl in m.slices:
            out += list(sl.params) + [p for src in sl.sources for p in src.params]
        if m is not t:
            out += list(m.params)
    return out


def density_warnings(t: Target) -> list[str]:
    """A ``density`` above 1 keeps every entry (mergekit clamps it so, and so does mergebuild):
    almost always a slip (``density=5`` for 0.5), so say so once per value."""
    out: list[str] = []
    for p in _all_params(t):
        if p.name != "density":
            continue
        values = p.value if isinstance(p.value, tuple) else (p.value,)
        big = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 1]
        if big:
            where = f"{p.loc}: " if p.loc else ""
            msg = f"{where}density {big[0]} is above 1; it keeps every entry, as 1 does (mergekit clamps it too)"
            if msg not in out:
                out.append(msg)
    return out
