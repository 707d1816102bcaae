"""Quoted paths that name a target become references to it.

A target may be any folder (``"/scratch/merges/x": ...``, ``"../out/x": ...``); another target
that reads it writes the same quoted path (``"../out/x" weight=0.5``, ``base="/scratch/merges/x"``).
Quoted text is otherwise a local folder, so after parsing (includes spliced) such a path is
turned into a :class:`Sym` naming the target: the graph then orders the two, and the planner
takes the target's keys instead of re-reading its files.
"""

from __future__ import annotations

import os
from dataclasses import replace

from mergefile.errors import Loc
from mergefile.syntax.ast import (
    Param,
    PathRef,
    Slice,
    Source,
    Statement,
    Sym,
    Target,
    Value,
)

# Parameters whose value names a model (the graph follows these).
MODEL_PARAMS = frozenset({"base", "tokenizer_source", "tokenizer", "token", "finetuned", "models"})


def link_target_paths(statements: list[Statement], main_file: str) -> list[Statement]:
    """``statements`` with every quoted path that names a target made a reference to it.

    Target names are folders relative to ``main_file``'s directory; a quoted path is relative
    to the file that holds it (an include may sit elsewhere): both are compared as absolute paths.
    """
    here = _folder(main_file)
    names = {os.path.normpath(os.path.join(here, s.name)): s.name for s in statements if isinstance(s, Target)}
    return [_target(s, names) if isinstance(s, Target) else s for s in statements]


def _folder(file: str | None) -> str:
    real = file and not file.startswith("<")
    return os.path.abspath(os.path.dirname(file) if real else ".")


def _as_sym(value: Value, names: dict[str, str], loc: Loc | None) -> Value:
    if isinstance(value, tuple):
        return tuple(_as_sym(v, names, loc) for v in value)
    plain = isinstance(value, PathRef) and value.lora is None and value.architecture is None
    text = value.path if plain else value
    if not isinstance(text, str):
        return value
    at = getattr(value, "loc", None) or loc
    name = names.get(os.path.normpath(os.path.join(_folder(at.file if at else None), text)))
    return Sym(name, at) if name is not None else value


def _params(params: tuple[Param, ...], names: dict[str, str]) -> tuple[Param, ...]:
    return tuple(replace(p, value=_as_sym(p.value, names, p.loc)) if p.name in MODEL_PARAMS else p for p in params)


def _sources(sources: tuple[Source, ...], names: dict[str, str]) -> tuple[Source, ...]:
    return tuple(replace(s, ref=_as_sym(s.ref, names, s.loc), params=_params(s.params, names)) for s in sources)


def _slices(slices: tuple[Slice, ...], names: dict[str, str]) -> tuple[Slice, ...]:
    return tuple(replace(sl, sources=_sources(sl.sources, names), params=_params(sl.params, names)) for sl in slices)


def _target(t: Target, names: dict[str, str]) -> Target:
    modules = tuple(
        replace(m, sources=_sources(m.sources, names), slices=_slices(m.slices, names), params=_params(m.params, names))
        for m in t.modules
    )
    return replace(
        t,
        params=_params(t.params, names),
        sources=_sources(t.sources, names),
        slices=_slices(t.slices, names),
        modules=modules,
        args=tuple(_as_sym(a, names, t.loc) for a in t.args),
    )
