"""What a mergekit config may say that mergekit ignores or coerces, and how mergebuild answers.

mergekit's schema (pydantic models with ``extra="ignore"``) drops keys it does not know, and a
merge method reads only the parameters it declares; values go through pydantic's lax
validation (``"1e-10"`` becomes a float, ``1.0`` a boolean). A config that mergekit builds must
build here, with mergekit's result, so by default:

* an ignored key or parameter **warns once** (per file, key and place), naming it and, where
  known, where it belongs -- and is dropped, as mergekit drops it;
* a **likely typo** of a key or parameter that is used there (``lamda``, ``wieght``,
  ``paramters``) **stops** the build with the near match: mergekit would silently merge with
  the default, which is never what the person meant (``--lenient`` makes it a warning too);
* values are **coerced** as pydantic coerces them (:func:`coerce`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mergefile.methods.base import ParamSpec

__all__ = ["WarnOnce", "belongs", "coerce", "likely_typo", "numeric", "type_problem"]

_TRUE = ("1", "on", "t", "true", "y", "yes")
_FALSE = ("0", "off", "f", "false", "n", "no")
# Settings that sit at the top of a config, not among a method's parameters.
_TOP_SETTINGS = ("dtype", "out_dtype", "tokenizer_source", "chat_template", "base_model")


def _osa(a: str, b: str) -> int:
    """Edit distance with adjacent transpositions (``wieght`` is one edit from ``weight``)."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def likely_typo(name: str, choices: Iterable[str]) -> str | None:
    """The used name ``name`` is probably a misspelling of, or None.

    One edit (two for names of 8+ letters), case aside, and both names at least 4 letters: short
    names (``t``) and distinct words that share a stem (``normalize`` / ``normalize_weights``)
    are not typos of each other.
    """
    if len(name) < 4:
        return None
    limit = 2 if len(name) >= 8 else 1
    best = [(_osa(name.lower(), c.lower()), c) for c in choices if len(c) >= 4 and c != name]
    best = [(d, c) for d, c in best if d <= limit]
    return min(best)[1] if best else None


def belongs(
    key: str, where: str, method: str | None, top_keys: Iterable[str] = (), method_params: Iterable[str] = ()
) -> str:
    """A short "where it belongs" for an ignored key (empty when there is nothing to say)."""
    if key == "revision":
        return "to pin a revision, write it in the model string: model: org/name@REVISION"
    if where == "parameters" and key in _TOP_SETTINGS:
        return f"'{key}' is a top-level key of the config, not a merge parameter"
    if where == "parameters":
        return f"{method} does not use it" if method else ""
    if key in set(method_params):
        return f"it is a parameter of {method}: put it under 'parameters:'"
    if key in set(top_keys):
        return "it is a top-level key of the config"
    return ""


class WarnOnce:
    """A warning sink that says each (place, key) once per file."""

    def __init__(self, warn: Callable[[str], None]):
        self.warn, self.seen = warn, set()

    def __call__(self, key: tuple[str, str], message: str) -> None:
        if key not in self.seen:
            self.seen.add(key)
            self.warn(message)


def _one(kind: type, v: object) -> tuple[object, bool]:
    """(value, ok) of one scalar under pydantic's lax rules for ``kind``."""
    if kind is bool:
        if isinstance(v, bool):
            return v, True
        if isinstance(v, (int, float)) and v in (0, 1):
            return bool(v), True
        if isinstance(v, str) and v.strip().lower() in _TRUE + _FALSE:
            return v.strip().lower() in _TRUE, True
        return v, False
    if kind is int:
        if isinstance(v, (int, float)) and float(v).is_integer():
            return int(v), True
        if isinstance(v, str):
            try:
                return int(v.strip()), True
            except ValueError:
                return v, False
        return v, False
    if kind is float:
        if isinstance(v, (int, float)):
            return float(v) if isinstance(v, bool) else v, True
        if isinstance(v, str):
            try:
                f = float(v.strip())
            except ValueError:
                return v, False
            return f, math.isfinite(f)
        return v, False
    return v, True


def coerce(kind: type, value: object) -> tuple[object, list[object]]:
    """``value`` (a scalar or a gradient tuple) coerced to ``kind`` as mergekit's pydantic
    validation coerces it: (coerced value, []), or (value, [the first element refused])."""
    items = value if isinstance(value, tuple) else (value,)
    out = []
    for v in items:
        got, ok = _one(kind, v)
        if not ok:
            return value, [v]
        out.append(got)
    return (tuple(out) if isinstance(value, tuple) else out[0]), []


def type_problem(spec: ParamSpec, value: Any) -> str | None:
    """What is wrong with ``value`` for ``spec`` ("must be a number, got 'x'"), or None.

    What mergekit's pydantic schema coerces is accepted (``"1e-10"`` for a number, ``1.0`` for
    a boolean); ``syntax/yaml_leniency.coerce`` does the conversion.
    """
    want = {float: "a number", int: "an integer", bool: "true or false"}.get(spec.type)
    if want is None:
        return None
    _, refused = coerce(spec.type, value)
    return f"must be {want}, got {refused[0]!r}" if refused else None


def numeric(v: object) -> bool:
    """A string mergekit's schema reads as a number (``"1e-3"``: PyYAML keeps it a string)."""
    return isinstance(v, str) and not coerce(float, v)[1]
