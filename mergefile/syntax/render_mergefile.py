"""AST -> Mergefile text: the canonical form ``mergebuild import`` prints and ``fmt`` writes.

A pure function of the AST. ``fmt`` also passes a :class:`Layout` -- what the AST does not hold
but a formatter must keep: comments, blank lines, and which parameters were written in the
target's call ``ties(base=base)`` rather than its block. Without a layout (an imported YAML
config) the canonical choices apply: the leading settings such as ``base`` and ``dtype`` go in
the call, everything else in the block, one blank line between groups of statements.

Canonical form: 4-space indentation; in a block, sources first, then slices, modules and
parameters (each kind in its original order); ``name=value`` on source lines and in calls,
``name = value`` on block lines; lists on one line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mergefile.syntax.ast import (
    Assign,
    AutoRef,
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
)

Key = tuple  # ("node", line, col) for a node, (kind, line, col) for a container it owns
FILE = ("file", 0, 0)
KEYWORDS = ("model", "include", "as", "slice", "module", "hf", "true", "false")
CALL_SETTINGS = ("base", "dtype", "out_dtype", "seed", "tokenizer", "tokenizer_source", "chat_template")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_.\-]+)*\Z")
_ESCAPE = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t"}
INDENT = "    "


@dataclass
class Layout:
    """Source facts kept by ``fmt``, keyed by node location (see :func:`node_key`)."""

    leading: dict[Key, list[tuple[str, bool]]] = field(default_factory=dict)  # (comment, blank before)
    trailing: dict[Key, list[str]] = field(default_factory=dict)
    closing: dict[Key, list[tuple[str, bool]]] = field(default_factory=dict)  # before '}' / ')'
    after_close: dict[Key, list[str]] = field(default_factory=dict)  # after '}'
    blank_before: set[Key] = field(default_factory=set)
    call_params: set[Key] = field(default_factory=set)
    source: bool = False  # True when built from source text (blank lines come from it)


def node_key(node: object) -> Key:
    loc = getattr(node, "loc", None)
    return ("node", loc.line, loc.column) if loc is not None else ("node", id(node), -1)


def owned(kind: str, node: object) -> Key:
    return (kind,) + node_key(node)[1:]


def is_name(text: str) -> bool:
    """Can ``text`` be written bare (a NAME token that is not a keyword)?"""
    return bool(_NAME.match(text)) and text not in KEYWORDS


def quote(text: str) -> str:
    return '"' + "".join(_ESCAPE.get(c, c) for c in text) + '"'


def name_text(name: str) -> str:
    """A target or model name: bare when it can be, else quoted (``"/scratch/x"``, ``"../out/x"``)."""
    return name if is_name(name) else quote(name)


def value_text(v: Value) -> str:
    """A value as Mergefile text (``true``, ``0.5``, ``"s"``, ``[0, 1]``, ``hf("o/x")``...)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError(f"{v} cannot be written in a Mergefile")
        return repr(v)
    if isinstance(v, str):
        return quote(v)
    if isinstance(v, tuple):
        return "[" + ", ".join(value_text(x) for x in v) + "]"
    if isinstance(v, Sym):
        return name_text(v.name)
    if isinstance(v, (HfRef, PathRef)):
        return ref_text(v)
    raise ValueError(f"cannot write {v!r} in a Mergefile (an AutoRef needs a model declaration)")


def ref_text(ref: HfRef | PathRef | Sym | AutoRef) -> str:
    """``"path"``, ``hf("org/x", revision="r")`` or a name; ``+ LORA`` when there is one."""
    if isinstance(ref, PathRef):
        text = quote(ref.path)
    elif isinstance(ref, HfRef):
        rev = f", revision={quote(ref.revision)}" if ref.revision else ""
        text = f"hf({quote(ref.repo)}{rev})"
    elif isinstance(ref, Sym):
        return name_text(ref.name)
    else:
        raise ValueError(f"cannot write {ref!r} in a Mergefile")
    if ref.architecture is not None:
        raise ValueError("a model read as another architecture must be declared: model m = ... (architecture=...)")
    return text + (" + " + ref_text(ref.lora) if ref.lora is not None else "")


def decl_text(ref: HfRef | PathRef | Sym | AutoRef) -> str:
    """The right side of ``model m = ...``: the reference, then its options in parentheses."""
    arch = getattr(ref, "architecture", None)
    if arch is None:
        return ref_text(ref)
    from dataclasses import replace

    return f"{ref_text(replace(ref, architecture=None))} (architecture={quote(arch)})"


def param_text(p: Param, sep: str = "=") -> str:
    filt = ""
    if p.filter is not None:
        filt = "[" + (p.filter if is_name(p.filter) else quote(p.filter)) + "]"
    return f"{p.name}{filt}{sep}{value_text(p.value)}"


def source_text(s: Source) -> str:
    if isinstance(s.ref, (HfRef, PathRef)) and s.ref.lora is not None:
        raise ValueError("a LoRA reference must be declared: model m = BASE + LORA")
    head = ref_text(s.ref)
    layers = f"[{s.layers[0]}:{s.layers[1]}]" if s.layers is not None else ""
    return " ".join([head + layers] + [param_text(p) for p in s.params])


class _Writer:
    """Emits lines with comments and blank lines around each node."""

    def __init__(self, layout: Layout | None):
        self.layout = layout or Layout()
        self.lines: list[str] = []
        self.fresh = True  # nothing written yet in the current container

    def blank(self) -> None:
        if not self.fresh and self.lines and self.lines[-1] != "":
            self.lines.append("")

    def comments(self, items: list[tuple[str, bool]], depth: int) -> None:
        for text, blank in items:
            if blank:
                self.blank()
            self.lines.append(INDENT * depth + text)
            self.fresh = False

    def line(self, node: object, depth: int, text: str, blank: bool, trailing: bool = True) -> None:
        """Leading comments, an optional blank line, then ``text`` with trailing comments."""
        key = node_key(node)
        lead = self.layout.leading.get(key, [])
        if lead and (lead[0][1] or (blank and not self.layout.source)):
            self.blank()
        self.comments(lead, depth)
        if (key in self.layout.blank_before) if self.layout.source else (blank and not lead):
            self.blank()
        self.lines.append(INDENT * depth + text + (self.tail(key) if trailing else ""))
        self.fresh = False

    def tail(self, key: Key) -> str:
        found = self.layout.trailing.get(key)
        return "  " + " ".join(found) if found else ""

    def close(self, kind: Key, depth: int, text: str) -> None:
        """Comments before a closing bracket, then the bracket line."""
        self.comments(self.layout.closing.get(kind, []), depth + 1)
        after = self.layout.after_close.get(kind)
        self.lines.append(INDENT * depth + text + ("  " + " ".join(after) if after else ""))
        self.fresh = False


def render_mergefile(mf: Mergefile, layout: Layout | None = None) -> str:
    """The Mergefile text of ``mf`` (ends with a newline).

    Example:
        >>> from mergefile.syntax import parse_text
        >>> print(render_mergefile(parse_text('model a="./a";out/x:linear{a weight=1}')), end="")
        model a = "./a"
        <BLANKLINE>
        out/x: linear {
            a weight=1
        }
    """
    w = _Writer(layout)
    prev: Statement | None = None
    for st in mf.statements:
        blank = prev is not None and (type(prev) is not type(st) or isinstance(st, Target))
        _statement(w, st, blank)
        prev = st
    w.comments(w.layout.closing.get(FILE, []), 0)
    return "\n".join(w.lines) + "\n" if w.lines else ""


def _statement(w: _Writer, st: Statement, blank: bool) -> None:
    if isinstance(st, Target):
        _target(w, st, blank)
    elif isinstance(st, ModelDecl):
        w.line(st, 0, f"model {st.name} = {decl_text(st.ref)}", blank)
    elif isinstance(st, Assign):
        w.line(st, 0, f"{st.name} = {value_text(st.value)}", blank)
    elif isinstance(st, Phony):
        w.line(st, 0, f"{st.name}: " + " ".join(name_text(d) for d in st.deps), blank)
    elif isinstance(st, Include):
        as_part = f" as {st.as_target}" if st.as_target else ""
        w.line(st, 0, f"include {quote(st.path)}{as_part}", blank)
    else:  # pragma: no cover - the Statement union is closed
        raise ValueError(f"unknown statement {st!r}")


def _split_params(w: _Writer, t: Target, has_items: bool) -> tuple[list[Param], list[Param]]:
    """(call keywords, block lines): from the layout, else the canonical rule."""
    if w.layout.source:
        call = [p for p in t.params if node_key(p) in w.layout.call_params]
        return call, [p for p in t.params if node_key(p) not in w.layout.call_params]
    params = list(t.params)
    if not has_items and all(p.filter is None for p in params):
        return params, []
    # The call is a prefix of the params (so the text parses back to the same order): through
    # the first of any restated pair (a call keyword the block sets again), then settings.
    keys = [(p.name, p.filter) for p in params]
    end = max((i + 1 for i, k in enumerate(keys) if keys.count(k) > 1 and keys.index(k) == i), default=0)
    while end < len(params) and params[end].filter is None and params[end].name in CALL_SETTINGS:
        end += 1
    if any(p.filter is not None for p in params[:end]):
        end = 0
    return params[:end], params[end:]


def _target(w: _Writer, t: Target, blank: bool) -> None:
    has_items = bool(t.sources or t.slices or t.modules)
    call, block = _split_params(w, t, has_items)
    items: list[object] = [*t.sources, *t.slices, *t.modules, *block]
    open_block = bool(items) or owned("block", t) in w.layout.closing
    head = f"{name_text(t.name)}: {t.method}"
    args = [value_text(a) for a in t.args] + [param_text(p) for p in call]
    multiline = (
        any(node_key(p) in w.layout.leading or node_key(p) in w.layout.trailing for p in call)
        or owned("call", t) in w.layout.closing
    )
    if multiline:
        w.line(t, 0, head + "(", blank, trailing=False)
        w.fresh = True
        for a in t.args:
            w.lines.append(INDENT + value_text(a) + ",")
        for p in call:
            w.line(p, 1, param_text(p) + ",", False)
        w.close(owned("call", t), 0, ")" + (" {" if open_block else "") + w.tail(node_key(t)))
    else:
        if args or not open_block:
            head += "(" + ", ".join(args) + ")"
        w.line(t, 0, head + (" {" if open_block else ""), blank)
    if not open_block:
        return
    _items(w, items, 1)
    w.close(owned("block", t), 0, "}")


def _items(w: _Writer, items: list[object], depth: int) -> None:
    w.fresh = True
    for item in items:
        if isinstance(item, Source):
            w.line(item, depth, source_text(item), False)
        elif isinstance(item, Param):
            w.line(item, depth, param_text(item, " = "), False)
        elif isinstance(item, Slice):
            _slice(w, item, depth)
        elif isinstance(item, Module):
            name = item.name if is_name(item.name) else quote(item.name)
            w.line(item, depth, f"module {name} {{", False)
            _items(w, [*item.sources, *item.slices, *item.params], depth + 1)
            w.close(owned("module", item), depth, "}")


def _slice(w: _Writer, sl: Slice, depth: int) -> None:
    inner = [*sl.sources, *sl.params]
    commented = owned("slice", sl) in w.layout.closing or any(
        node_key(x) in w.layout.leading or node_key(x) in w.layout.trailing for x in inner
    )
    if len(sl.sources) == 1 and not sl.params and not commented:
        w.line(sl, depth, "slice " + source_text(sl.sources[0]), False)
        return
    w.line(sl, depth, "slice {", False)
    _items(w, inner, depth + 1)
    w.close(owned("slice", sl), depth, "}")
