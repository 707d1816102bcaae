"""The recipe AST: frozen dataclasses, one per grammar rule, each with its location.

Both front ends produce it: the Mergefile parser (``parser.py``) and the mergekit YAML importer
(``yaml_import.py``). The planner only ever sees this.

Values (``Value``) are plain Python: ``int``, ``float``, ``str`` (a quoted string), ``bool``,
``tuple`` (a list literal, e.g. a gradient), or one of the reference types below.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mergefile.errors import Loc


@dataclass(frozen=True)
class Sym:
    """A bare name in value position: a model, a target, a variable, or an enum word (``union``)."""

    name: str
    loc: Loc | None = field(default=None, compare=False)


@dataclass(frozen=True)
class HfRef:
    """``hf("org/id", revision="main")``: a model on the Hugging Face Hub."""

    repo: str
    revision: str | None = None
    loc: Loc | None = field(default=None, compare=False)
    lora: Ref | None = None  # a LoRA applied on load: ``model m = hf("org/x") + "./lora"``
    architecture: str | None = None  # ``(architecture="X")``: mergekit's override_architecture


@dataclass(frozen=True)
class PathRef:
    """A quoted local folder path, relative to the directory of the file that names it."""

    path: str
    loc: Loc | None = field(default=None, compare=False)
    lora: Ref | None = None  # a LoRA applied on load: ``model m = "./x" + "./lora"``
    architecture: str | None = None  # ``(architecture="X")``: mergekit's override_architecture


@dataclass(frozen=True)
class AutoRef:
    """A mergekit-style model string ``path_or_id[@revision]`` (YAML produces these).

    Local folder if it exists (relative to ``base_dir``), else a hub id. The ``+lora[@revision]``
    part of mergekit's syntax is parsed into ``lora`` (itself an AutoRef), so ``text`` never
    holds a ``+``.
    """

    text: str
    base_dir: str = "."
    loc: Loc | None = field(default=None, compare=False)
    lora: AutoRef | None = None
    architecture: str | None = None  # override_architecture: the class the model is read as


def normalize_name(name: str) -> str:
    """``./out/x/`` and ``out/x`` name the same target (and ``"/scratch/x/"`` is ``/scratch/x``)."""
    name = name.strip()
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/") or name


Ref = Sym | HfRef | PathRef | AutoRef
Value = int | float | str | bool | tuple | Sym | HfRef | PathRef | AutoRef


@dataclass(frozen=True)
class Param:
    """``name = value`` or ``name[filter] = value`` (filter: substring of the tensor name)."""

    name: str
    value: Value
    filter: str | None = None
    loc: Loc | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Source:
    """One input of a target or slice: ``math weight=0.6`` or ``code[8:32] scale=0.5``.

    ``layers`` is a half-open ``(start, end)`` layer range, or None for the whole model.
    """

    ref: Ref
    layers: tuple[int, int] | None = None
    params: tuple[Param, ...] = ()
    loc: Loc | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Slice:
    """``slice model[a:b] k=v`` or ``slice { model[a:b] k=v ; other[c:d] ; t = 0.3 }``."""

    sources: tuple[Source, ...]
    params: tuple[Param, ...] = ()
    loc: Loc | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Module:
    """``module text_decoder { sources | slices | params }``: one stack of a multi-module model.

    mergekit's ``modules:`` (vision-language models, encoder-decoders): each module has its own
    sources or slices and module-level parameters (precedence between slice and target).
    """

    name: str
    sources: tuple[Source, ...] = ()
    slices: tuple[Slice, ...] = ()
    params: tuple[Param, ...] = ()
    loc: Loc | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Target:
    """``out/dir: method(k=v, ...) { sources | slices | params }``.

    ``params`` holds call keyword arguments first, then block assignments, in source order
    (``base=...``, ``dtype``, method parameters ...). ``args`` holds positional call
    arguments (used by target generators such as ``evolve``).
    """

    name: str
    method: str
    params: tuple[Param, ...] = ()
    sources: tuple[Source, ...] = ()
    slices: tuple[Slice, ...] = ()
    args: tuple[Value, ...] = ()
    loc: Loc | None = field(default=None, compare=False)
    method_loc: Loc | None = field(default=None, compare=False)
    origin: str | None = field(default=None, compare=False)  # recipe text it came from (model card)
    modules: tuple[Module, ...] = ()


@dataclass(frozen=True)
class Phony:
    """``all: out/a out/b`` — a named group of targets, never a folder."""

    name: str
    deps: tuple[str, ...]
    loc: Loc | None = field(default=None, compare=False)
    dep_locs: tuple[Loc | None, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class ModelDecl:
    """``model NAME = "path"`` or ``model NAME = hf("org/id", revision=...)``."""

    name: str
    ref: Ref
    loc: Loc | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Assign:
    """A file-level ``name = value``: a variable and a default for every target."""

    name: str
    value: Value
    loc: Loc | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Include:
    """``include "common.mf"`` (statements spliced in) or ``include "merge.yml" as out/x``."""

    path: str
    as_target: str | None = None
    loc: Loc | None = field(default=None, compare=False)


Statement = Assign | ModelDecl | Target | Phony | Include


@dataclass(frozen=True)
class Mergefile:
    """A parsed file: its path and its statements in order (includes already resolved)."""

    path: str
    statements: tuple[Statement, ...]
    files: tuple[str, ...] = ()  # every file read (the Mergefile, its includes): what a no-op stamp watches

    def targets(self) -> dict[str, Target | Phony]:
        return {s.name: s for s in self.statements if isinstance(s, (Target, Phony))}

    def models(self) -> dict[str, ModelDecl]:
        return {s.name: s for s in self.statements if isinstance(s, ModelDecl)}

    def assigns(self) -> dict[str, Assign]:
        return {s.name: s for s in self.statements if isinstance(s, Assign)}
