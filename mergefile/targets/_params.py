"""Typed parameters of a target kind: call keywords, block lines and file-level defaults.

A kind declares its parameters as :class:`~mergefile.methods.base.ParamSpec` rows (``tuple`` for
a list of strings); this checks the names (with "did you mean"), the types, and which parameters
may carry a ``[filter]`` (a substring of a module name, as for merge parameters).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mergefile.errors import ConfigError, Loc, unknown
from mergefile.methods.base import ParamSpec
from mergefile.plan.params import coerce, pick, substitute
from mergefile.syntax.ast import Param, Sym, Target

COMMON = ("base", "dtype", "out_dtype", "seed")


class KindParams:
    """Resolved parameters of one kind target.

    Args:
        planner: the :class:`~mergefile.plan.planner.Planner` (variables, file defaults).
        target: the target.
        specs: the kind's own parameters.
        filtered: names that may be set per module with ``name[filter] = value``.
    """

    def __init__(self, planner, target: Target, specs: Sequence[ParamSpec], filtered: Sequence[str] = ()):
        self.planner, self.t = planner, target
        self.specs = {s.name: s for s in specs}
        self.variables = planner.variables
        allowed = set(self.specs) | set(COMMON)
        for p in target.params:
            if p.name not in allowed:
                raise unknown(f"parameter of {target.method}()", p.name, allowed, p.loc)
            if p.filter is not None and p.name not in filtered:
                raise ConfigError(
                    f"'{p.name}' takes no [filter] in {target.method}()",
                    p.loc,
                    f"only {', '.join(filtered)} may be set per module" if filtered else None,
                )
        names = set(self.specs)
        self.file = tuple(p for p in planner.file_params if p.name in names)

    def param(self, name: str) -> Param | None:
        """The unfiltered entry of ``name`` on the target (last wins), else the file default."""
        return pick(self.t.params, name, "\0") or pick(self.file, name, "\0")

    def get(self, name: str, module: str | None = None) -> Any:
        """The value of ``name`` (for ``module`` when given, so filters apply), type-checked."""
        spec = self.specs[name]
        p = pick(self.t.params, name, module) if module is not None else None
        p = p or self.param(name)
        if p is None:
            if spec.required:
                raise ConfigError(f"{self.t.method}() needs {name}=...", self.t.method_loc or self.t.loc)
            return spec.default
        value = substitute(p.value, self.variables)
        if spec.type is tuple:
            return words(value, name, p.loc)
        return coerce(spec, value, p.loc, f"in target '{self.t.name}'")

    def loc(self, name: str) -> Loc | None:
        p = self.param(name)
        return p.loc if p is not None else self.t.method_loc or self.t.loc

    def filters(self, name: str) -> list[Param]:
        return [p for p in self.t.params if p.name == name and p.filter is not None]


def words(value: Any, name: str, loc: Loc | None) -> tuple[str, ...]:
    """A list of strings (a single string or bare word is a one-item list)."""
    if isinstance(value, (str, Sym)):
        value = (value,)
    if not isinstance(value, tuple) or not all(isinstance(v, (str, Sym)) for v in value):
        raise ConfigError(f"'{name}' must be a list of strings, e.g. {name}=[\"...\"], got {value!r}", loc)
    return tuple(v.name if isinstance(v, Sym) else v for v in value)


def source_value(params: Sequence[Param], name: str, spec: ParamSpec, variables, where: str) -> Any:
    """A parameter on a source line (``math prompts=[...]``), type-checked, or its default."""
    p = next((q for q in reversed(params) if q.name == name), None)
    if p is None:
        return spec.default
    value = substitute(p.value, variables)
    if spec.type is tuple:
        return words(value, name, p.loc)
    return coerce(spec, value, p.loc, where)
