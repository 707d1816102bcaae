"""Imported YAML targets -> a Mergefile AST with named model declarations.

mergekit names models by path or hub id wherever it uses them; a Mergefile declares each model
once (``model math = "models/math"``) and uses the name. This module decides, for each
mergekit reference, what it means *now* -- exactly as the build decides: a local folder if one
exists (relative to the working directory, else the YAML's folder: ``model_paths.py``) and no
``@revision`` is given, else a hub id -- and gives
it a readable name from its last path component, de-duplicated.

Relative paths are rewritten to stay correct from the folder the Mergefile will live in
(``out_dir``); absolute paths stay absolute.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import replace

from mergefile.errors import ConfigError
from mergefile.syntax.ast import (
    AutoRef,
    HfRef,
    Mergefile,
    ModelDecl,
    Param,
    PathRef,
    Ref,
    Slice,
    Source,
    Statement,
    Sym,
    Target,
    Value,
)
from mergefile.syntax.model_paths import local_folder

KEYWORDS = ("model", "include", "as", "slice", "module", "hf", "true", "false")
ENUM_WORDS = ("union", "base", "zero", "auto")  # bare words with a meaning of their own
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")  # as plan/inputs.py resolves AutoRefs
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.\-]+")


def relative_path(path: str, base_dir: str, out_dir: str) -> str:
    """``path`` (relative to ``base_dir``) as seen from ``out_dir``; absolute stays absolute."""
    if os.path.isabs(path):
        return os.path.normpath(path)
    full = os.path.abspath(os.path.join(base_dir, path))
    return os.path.relpath(full, os.path.abspath(out_dir)).replace(os.sep, "/")


def concrete_ref(ref: AutoRef, out_dir: str) -> PathRef | HfRef:
    """What a mergekit model string means on this machine: a local folder or a hub model."""
    name, _, rev = ref.text.partition("@")
    lora = concrete_ref(ref.lora, out_dir) if ref.lora is not None else None
    found = local_folder(ref, name) if not rev else None
    if found is not None:
        path = name if os.path.isabs(name) else os.path.relpath(found.path, ref.base_dir)
        return PathRef(relative_path(path, ref.base_dir, out_dir), ref.loc, lora, ref.architecture)
    if not rev and not HUB_ID.match(name):
        return PathRef(relative_path(name, ref.base_dir, out_dir), ref.loc, lora, ref.architecture)
    if not HUB_ID.match(name):
        raise ConfigError(f"model '{ref.text}' is neither a local folder nor a hub id", ref.loc)
    return HfRef(name, rev or None, ref.loc, lora, ref.architecture)


def model_name(ref: PathRef | HfRef) -> str:
    """A readable name: the last path component (``org/Model-7B`` -> ``Model-7B``)."""
    text = ref.repo if isinstance(ref, HfRef) else os.path.normpath(ref.path)
    last = text.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    name = _NAME_CHARS.sub("_", last).strip("_.-") or "model"
    if not (name[0].isalpha() or name[0] == "_"):
        name = "m" + name
    if ref.lora is not None:
        name += "-" + model_name(ref.lora)
    return name


class _Namer:
    """Gives each distinct reference one name, never a keyword, enum word or target name."""

    def __init__(self, taken: set[str], out_dir: str):
        self.taken, self.out_dir = set(taken), out_dir
        self.names: dict[PathRef | HfRef, str] = {}
        self.decls: list[ModelDecl] = []

    def __call__(self, ref: AutoRef) -> Sym:
        concrete = concrete_ref(ref, self.out_dir)
        key = _strip_locs(concrete)
        if key not in self.names:
            name = model_name(concrete)
            if name in KEYWORDS or name in ENUM_WORDS:
                name += "_model"
            base, n = name, 2
            while name in self.taken:
                name, n = f"{base}-{n}", n + 1
            self.taken.add(name)
            self.names[key] = name
            self.decls.append(ModelDecl(name, key, None))
        return Sym(self.names[key], ref.loc)


def _strip_locs(ref: Ref) -> Ref:
    lora = getattr(ref, "lora", None)
    if lora is not None:
        ref = replace(ref, lora=_strip_locs(lora))
    return replace(ref, loc=None)


def map_refs(t: Target, fn: Callable[[AutoRef], Value]) -> Target:
    """``t`` with every AutoRef (sources, base, tokenizer and token sources) replaced by ``fn``."""

    def value(v: Value) -> Value:
        if isinstance(v, AutoRef):
            return fn(v)
        return tuple(value(x) for x in v) if isinstance(v, tuple) else v

    def params(ps: tuple[Param, ...]) -> tuple[Param, ...]:
        return tuple(replace(p, value=value(p.value)) for p in ps)

    def sources(ss: tuple[Source, ...]) -> tuple[Source, ...]:
        return tuple(replace(s, ref=value(s.ref), params=params(s.params)) for s in ss)

    def slices(sl: tuple[Slice, ...]) -> tuple[Slice, ...]:
        return tuple(replace(x, sources=sources(x.sources), params=params(x.params)) for x in sl)

    modules = tuple(
        replace(m, sources=sources(m.sources), slices=slices(m.slices), params=params(m.params)) for m in t.modules
    )
    return replace(t, params=params(t.params), sources=sources(t.sources), slices=slices(t.slices), modules=modules)


def _autorefs(t: Target) -> list[AutoRef]:
    """A target's AutoRefs in reading order: base model, inputs, then the other settings."""
    found: list[AutoRef] = []
    map_refs(replace(t, params=tuple(p for p in t.params if p.name == "base")), found.append)
    map_refs(replace(t, params=()), found.append)
    map_refs(replace(t, sources=(), slices=(), modules=()), found.append)
    return found


def yaml_to_mergefile(targets: Sequence[Target], out_path: str) -> Mergefile:
    """Imported targets (stages first, final last) -> a Mergefile to be saved at ``out_path``.

    The final target comes first in the file, so a plain ``mergebuild`` builds it (make's
    default goal); its stages follow in dependency order.
    """
    out_dir = os.path.dirname(os.path.abspath(out_path))
    namer = _Namer({t.name for t in targets}, out_dir)
    for t in targets:
        for ref in _autorefs(t):
            namer(ref)  # declare models in reading order
    named = [map_refs(t, namer) for t in targets]
    ordered: list[Statement] = [named[-1], *named[:-1]]
    return Mergefile(out_path, tuple(namer.decls) + tuple(ordered))
