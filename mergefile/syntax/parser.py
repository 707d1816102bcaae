"""Mergefile text -> AST: a Lark Transformer, include resolution and duplicate checks.

The Transformer converts terminals and checks what one rule can see (layer ranges, duplicate
parameters, ``hf()`` arguments); :func:`parse_mergefile` splices includes and checks that every
target and model is defined once.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lark import Token, Transformer, Tree, v_args
from lark.exceptions import VisitError
from lark.tree import Meta

from mergefile.errors import ConfigError, Loc, MergefileSyntaxError, UserError, did_you_mean
from mergefile.syntax.ast import (
    Assign,
    HfRef,
    Include,
    Mergefile,
    ModelDecl,
    Module,
    Param,
    PathRef,
    Phony,
    Slice,
    Source,
    Statement,
    Sym,
    Target,
    Value,
    normalize_name,
)
from mergefile.syntax.grammar import parse_tree
from mergefile.syntax.target_paths import link_target_paths
from mergefile.syntax.yaml_import import load_yaml_targets

_Children = list[Any]  # a rule's children, already transformed (tokens or AST values)
_INT = re.compile(r"[+-]?\d+\Z")
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}
_HF_KWARGS = ("revision",)
_MODEL_OPTIONS = ("architecture",)
YAML_SUFFIXES = (".yml", ".yaml")


@dataclass(frozen=True)
class _Filter:
    text: str


@dataclass(frozen=True)
class _Range:
    start: int
    end: int


@dataclass(frozen=True)
class _Call:
    args: tuple[Value, ...]
    kwargs: tuple[Param, ...]


@dataclass(frozen=True)
class _Block:
    items: tuple[Source | Param | Slice | Module, ...]


def _first_line(loc: Loc | None, here: Loc | None) -> str:
    """'line 3' when in the same file as ``here``, else the full 'file:line:col'."""
    if loc is None:
        return "elsewhere"
    return f"line {loc.line}" if here is not None and here.file == loc.file else str(loc)


def check_params(params: tuple[Param, ...] | list[Param], where: str) -> None:
    """Raise on the same ``name[filter]`` set twice in one place (block, source line, call)."""
    seen: dict[tuple[str, str | None], Param] = {}
    for p in params:
        key = (p.name, p.filter)
        if key in seen:
            shown = p.name if p.filter is None else f"{p.name}[{p.filter}]"
            first = _first_line(seen[key].loc, p.loc)
            raise ConfigError(f"duplicate parameter '{shown}' in {where} (first set at {first})", p.loc)
        seen[key] = p


@v_args(meta=True)
class _ToAst(Transformer):
    """Tree -> AST nodes. One method per grammar rule; terminals become Python values."""

    def __init__(self, text: str, path: str):
        super().__init__()
        self.text, self.path = text, path

    def _loc(self, item: Token | object) -> Loc:
        return Loc(self.path, getattr(item, "line", 1) or 1, getattr(item, "column", 1) or 1)

    # -- values --
    def number(self, meta: Meta, children: _Children) -> int | float:
        raw = str(children[0])
        return int(raw) if _INT.match(raw) else float(raw)

    def string(self, meta: Meta, children: _Children) -> str:
        return self._unquote(children[0])

    def sym(self, meta: Meta, children: _Children) -> Sym:
        return Sym(str(children[0]), self._loc(children[0]))

    def true(self, meta: Meta, children: _Children) -> bool:
        return True

    def false(self, meta: Meta, children: _Children) -> bool:
        return False

    def list(self, meta: Meta, children: _Children) -> tuple:
        return tuple(children)

    def _unquote(self, tok: Token) -> str:
        body, out, i = tok.value[1:-1], [], 0
        while i < len(body):
            ch = body[i]
            if ch == "\\":
                nxt = body[i + 1]
                if nxt not in _ESCAPES:
                    loc = Loc(self.path, tok.line, tok.column + i + 1)
                    raise MergefileSyntaxError(
                        f"unknown escape '\\{nxt}' in string {tok.value}",
                        loc,
                        "use \\\\ for a backslash (or '/' in paths)",
                    )
                out.append(_ESCAPES[nxt])
                i += 2
            else:
                out.append(ch)
                i += 1
        return "".join(out)

    def hf_call(self, meta: Meta, children: _Children) -> HfRef:
        repo_tok, kwargs = children[0], children[1:]
        repo = self._unquote(repo_tok)
        if not repo:
            raise ConfigError("hf() repo id is empty", self._loc(repo_tok))
        check_params(kwargs, "hf()")
        revision = None
        for kw in kwargs:
            if kw.name not in _HF_KWARGS:
                hint = did_you_mean(kw.name, _HF_KWARGS) or "hf() takes only revision=..."
                raise ConfigError(f"unknown hf() argument '{kw.name}'", kw.loc, hint)
            if not isinstance(kw.value, str):
                raise ConfigError("hf() revision must be a quoted string", kw.loc)
            revision = kw.value
        return HfRef(repo, revision, Loc(self.path, meta.line, meta.column))

    def path_ref(self, meta: Meta, children: _Children) -> PathRef:
        return PathRef(self._unquote(children[0]), self._loc(children[0]))

    # -- parameters, ranges, sources --
    def kwarg(self, meta: Meta, children: _Children) -> Param:
        name, value = children
        return Param(str(name), value, None, self._loc(name))

    def filter(self, meta: Meta, children: _Children) -> _Filter:
        tok = children[0]
        text = self._unquote(tok) if tok.type == "STRING" else str(tok)
        if not text:
            raise MergefileSyntaxError("empty filter", self._loc(tok), 'e.g. weight["mlp"] = 0.5')
        return _Filter(text)

    def param(self, meta: Meta, children: _Children) -> Param:
        name, rest = children[0], children[1:]
        filt = rest[0].text if len(rest) == 2 else None
        filt = None if filt == "*" else filt  # mergekit's catch-all, same as no filter
        return Param(str(name), rest[-1], filt, self._loc(name))

    def range(self, meta: Meta, children: _Children) -> _Range:
        loc = Loc(self.path, meta.line, meta.column)
        start, end = children
        for bound in (start, end):
            if isinstance(bound, bool) or not isinstance(bound, int):
                shown = bound.name if isinstance(bound, Sym) else repr(bound)
                raise ConfigError(f"layer range bounds must be integers, got {shown}", loc, "e.g. [0:24]")
        if start < 0:
            raise ConfigError(f"layer range start must be >= 0, got {start}", loc)
        if end <= start:
            raise ConfigError(
                f"empty layer range [{start}:{end}]: the end must be greater than the start",
                loc,
                "ranges are half-open: [0:24] is layers 0..23",
            )
        return _Range(start, end)

    def _source(self, children: _Children) -> Source:
        head, rest = children[0], children[1:]
        if isinstance(head, Token):
            loc = self._loc(head)
            ref = Sym(str(head), loc) if head.type == "NAME" else PathRef(self._unquote(head), loc)
        else:
            ref, loc = head, head.loc
        layers = None
        if rest and isinstance(rest[0], _Range):
            layers = (rest[0].start, rest[0].end)
            rest = rest[1:]
        check_params(rest, "this source line")
        return Source(ref, layers, tuple(rest), loc)

    def source(self, meta: Meta, children: _Children) -> Source:
        return self._source(children)

    def slice_source(self, meta: Meta, children: _Children) -> Source:
        return self._source(children)

    def slice_single(self, meta: Meta, children: _Children) -> Slice:
        return Slice((children[0],), (), Loc(self.path, meta.line, meta.column))

    def slice_multi(self, meta: Meta, children: _Children) -> Slice:
        loc = Loc(self.path, meta.line, meta.column)
        sources = tuple(c for c in children if isinstance(c, Source))
        params = tuple(c for c in children if isinstance(c, Param))
        if not sources:
            raise ConfigError("a slice needs at least one source like math[0:24]", loc)
        check_params(params, "this slice")
        return Slice(sources, params, loc)

    def module(self, meta: Meta, children: _Children) -> Module:
        head, items = children[0], children[1:]
        name = self._unquote(head) if head.type == "STRING" else str(head)
        loc = Loc(self.path, meta.line, meta.column)
        sources = tuple(c for c in items if isinstance(c, Source))
        slices = tuple(c for c in items if isinstance(c, Slice))
        params = tuple(c for c in items if isinstance(c, Param))
        if sources and slices:
            raise ConfigError(f"module '{name}' mixes source lines and slices", slices[0].loc)
        if not sources and not slices:
            raise ConfigError(f"module '{name}' has no sources or slices", loc)
        check_params(params, f"module '{name}'")
        return Module(name, sources, slices, params, loc)

    # -- statements --
    def call(self, meta: Meta, children: _Children) -> _Call:
        args, kwargs = [], []
        for c in children:
            if isinstance(c, Param):
                kwargs.append(c)
            elif kwargs:
                raise ConfigError(
                    "positional argument after keyword argument",
                    Loc(self.path, meta.line, meta.column),
                    "put positional arguments first",
                )
            else:
                args.append(c)
        return _Call(tuple(args), tuple(kwargs))

    def block(self, meta: Meta, children: _Children) -> _Block:
        return _Block(tuple(children))

    def _target_name(self, tok: Token) -> str:
        """A target's folder as written: bare, or quoted when it is absolute, ``../x`` or ``.x``."""
        if tok.type != "STRING":
            return str(tok)
        name = normalize_name(self._unquote(tok))
        if name in ("", ".", "..") or "\n" in name:
            raise ConfigError(f"target name {tok} is not an output folder", self._loc(tok))
        return name

    def target(self, meta: Meta, children: _Children) -> Target:
        name, method, rest = self._target_name(children[0]), children[1], children[2:]
        call = next((c for c in rest if isinstance(c, _Call)), _Call((), ()))
        block = next((c for c in rest if isinstance(c, _Block)), _Block(()))
        block_params = tuple(i for i in block.items if isinstance(i, Param))
        sources = tuple(i for i in block.items if isinstance(i, Source))
        slices = tuple(i for i in block.items if isinstance(i, Slice))
        modules = tuple(i for i in block.items if isinstance(i, Module))
        _check_modules(str(name), sources, slices, modules)
        # Checked separately: a block line may restate a call keyword (the later one wins).
        check_params(call.kwargs, f"the call of '{name}'")
        check_params(block_params, f"the block of '{name}'")
        params = call.kwargs + block_params
        if sources and slices:
            raise ConfigError(
                f"target '{name}' mixes source lines and slices",
                slices[0].loc,
                "use either sources (a merge) or slices (a frankenmerge)",
            )
        origin = self.text[meta.start_pos : meta.end_pos]
        return Target(
            name,
            str(method),
            params,
            sources,
            slices,
            call.args,
            self._loc(children[0]),
            self._loc(method),
            origin,
            modules,
        )

    def phony(self, meta: Meta, children: _Children) -> Phony:
        name, deps = children[0], children[1:]
        return Phony(
            str(name),
            tuple(self._target_name(d) for d in deps),
            self._loc(name),
            tuple(self._loc(d) for d in deps),
        )

    def model_decl(self, meta: Meta, children: _Children) -> ModelDecl:
        options = children[-1] if isinstance(children[-1], _Call) else None
        refs = children[1:-1] if options is not None else children[1:]
        ref = refs[0]
        if len(refs) > 1:  # model m = BASE + LORA
            ref = replace(ref, lora=refs[1])
        if options is not None:  # model m = "./x" (architecture="LlamaForCausalLM")
            ref = replace(ref, architecture=self._model_options(options, meta))
        return ModelDecl(str(children[0]), ref, self._loc(children[0]))

    def _model_options(self, call: _Call, meta: Meta) -> str:
        """The options of a model declaration: ``architecture="Class"`` (override_architecture)."""
        if call.args or not call.kwargs:
            raise ConfigError(
                'a model declaration takes only architecture="Class" in parentheses',
                Loc(self.path, meta.line, meta.column),
            )
        check_params(call.kwargs, "the model's options")
        for kw in call.kwargs:
            if kw.name not in _MODEL_OPTIONS:
                hint = did_you_mean(kw.name, _MODEL_OPTIONS) or "a model takes only architecture=..."
                raise ConfigError(f"unknown model option '{kw.name}'", kw.loc, hint)
            if not isinstance(kw.value, str) or not kw.value:
                raise ConfigError('architecture must be a quoted class name, e.g. "LlamaForCausalLM"', kw.loc)
        return call.kwargs[0].value

    def assign(self, meta: Meta, children: _Children) -> Assign:
        return Assign(str(children[0]), children[1], self._loc(children[0]))

    def include(self, meta: Meta, children: _Children) -> Include:
        as_target = str(children[1]) if len(children) > 1 else None
        loc = Loc(self.path, meta.line, meta.column)
        return Include(self._unquote(children[0]), as_target, loc)

    def start(self, meta: Meta, children: _Children) -> list[Statement]:
        return list(children)


def _check_modules(name: str, sources: tuple, slices: tuple, modules: tuple[Module, ...]) -> None:
    """A target has modules or sources/slices, and each module name once."""
    if modules and (sources or slices):
        raise ConfigError(
            f"target '{name}' mixes 'module' blocks with source lines or slices",
            modules[0].loc,
            "with modules, every source and slice goes inside a module",
        )
    seen: dict[str, Module] = {}
    for m in modules:
        if m.name in seen:
            first = _first_line(seen[m.name].loc, m.loc)
            raise ConfigError(f"duplicate module '{m.name}' (first at {first})", m.loc)
        seen[m.name] = m


def parse_text(text: str, path: str = "<string>") -> Mergefile:
    """Parse one Mergefile's text. Includes stay as :class:`Include` statements.

    Args:
        text: the Mergefile source.
        path: the file name used in locations (and, by the caller, to resolve relative paths).

    Returns:
        The :class:`Mergefile` with its statements in source order.

    Raises:
        MergefileSyntaxError: the text does not parse.
        ConfigError: it parses but is impossible (duplicate names, bad ranges, ...).

    Example:
        >>> parse_text('model m = "./m"\\nout/x: linear { m weight=1 }').targets()["out/x"].method
        'linear'
    """
    return tree_to_mergefile(parse_tree(text, path), text, path)


def tree_to_mergefile(tree: Tree, text: str, path: str) -> Mergefile:
    """A parse tree of ``text`` -> the AST (``fmt`` parses with its own comment-keeping lexer)."""
    try:
        statements = _ToAst(text, path).transform(tree)
    except VisitError as e:
        if isinstance(e.orig_exc, UserError):
            raise e.orig_exc from None
        raise
    check_definitions(statements)
    return Mergefile(path, tuple(link_target_paths(statements, path)))


def check_definitions(statements: list[Statement] | tuple[Statement, ...]) -> None:
    """Each target, phony group and model name is defined once (they share one namespace)."""
    seen: dict[str, Statement] = {}
    kinds = {Target: "target", Phony: "target", ModelDecl: "model"}
    for st in statements:
        if not isinstance(st, (Target, Phony, ModelDecl)):
            continue
        first = seen.get(st.name)
        if first is not None:
            kind, first_kind = kinds[type(st)], kinds[type(first)]
            what = f"duplicate {kind} '{st.name}'"
            if kind != first_kind:
                what = f"{kind} '{st.name}' has the same name as a {first_kind}"
            raise ConfigError(f"{what} (first defined at {_first_line(first.loc, st.loc)})", st.loc)
        seen[st.name] = st


def parse_mergefile(path: str | os.PathLike[str], **yaml_options: Any) -> Mergefile:
    """Read and parse a Mergefile, splicing in its includes (recursively).

    Include paths are relative to the including file's directory; statements from an included
    file keep locations in that file (so ``os.path.dirname(loc.file)`` resolves their paths).
    ``yaml_options`` (``lenient``, ``warn``) go to the import of included mergekit YAML files.

    Raises:
        MergefileSyntaxError, ConfigError: bad text, include cycle, missing include, duplicates.

    Example:
        >>> mf = parse_mergefile("Mergefile")  # doctest: +SKIP
    """
    path = str(path)
    files: list[str] = []
    statements = _load(path, (), None, yaml_options, files)
    check_definitions(statements)
    return Mergefile(path, tuple(link_target_paths(statements, path)), tuple(dict.fromkeys(files)))


def _load(
    path: str, chain: tuple[tuple[str, str], ...], at: Loc | None, yaml_options: dict, files: list[str]
) -> list[Statement]:
    """Statements of ``path`` with includes spliced; ``chain`` = (shown, real) paths above it;
    every file read is appended to ``files``."""
    real = os.path.realpath(path)
    if any(r == real for _, r in chain):
        shown = " -> ".join([s for s, _ in chain] + [path])
        raise ConfigError(f"include cycle: {shown}", at)
    what = "include file" if at is not None else "Mergefile"
    files.append(real)  # before reading: a missing include appearing must be noticed
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as e:
        raise ConfigError(f"cannot read {what} '{path}': {e.strerror or e}", at) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} '{path}' is not UTF-8 text ({e.reason})", at) from None
    out: list[Statement] = []
    for st in parse_text(text, path).statements:
        if isinstance(st, Include):
            out.extend(_include(st, path, chain + ((path, real),), yaml_options, files))
        else:
            out.append(st)
    return out


def _include(
    st: Include, path: str, chain: tuple[tuple[str, str], ...], yaml_options: dict, files: list[str]
) -> list[Statement]:
    target = os.path.normpath(os.path.join(os.path.dirname(path), st.path))
    is_yaml = st.path.lower().endswith(YAML_SUFFIXES)
    if st.as_target is None and is_yaml:
        raise ConfigError(
            f'a mergekit YAML config must be included as a target: include "{st.path}" as out/name',
            st.loc,
        )
    if st.as_target is None:
        return _load(target, chain, st.loc, yaml_options, files)
    if not is_yaml:
        raise ConfigError("'include ... as out/name' imports a mergekit YAML config (.yml or .yaml)", st.loc)
    files.append(os.path.realpath(target))
    if not os.path.isfile(target):
        raise ConfigError(f"cannot read include file '{target}': No such file", st.loc)
    # A multi-document file brings its stages too (targets next to ``as``'s folder).
    work_dir = os.path.dirname(os.path.abspath(path))  # the YAML's "./x" is the Mergefile's (syntax/model_paths.py)
    return [replace(t, loc=st.loc) for t in load_yaml_targets(target, st.as_target, work_dir=work_dir, **yaml_options)]
