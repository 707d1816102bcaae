"""What ``fmt`` keeps besides the AST: comments, blank lines, call-versus-block parameters.

The grammar ignores comments, so a second parser (same grammar) collects them through a Lark
``lexer_callbacks`` hook. Each comment is then attached by line:

* a comment alone on its line goes before the next statement or block item of the innermost
  block (or call) it sits in -- or, when nothing follows in that block, before its ``}``;
* a comment after code goes at the end of the line of the outermost node starting on that line
  (``out/x: ties {  # why``), or after the ``}`` it follows, or else at the end of the last node
  started before it (a comment on the second line of a wrapped list).

The renderer writes each node on one line, so attached comments stay where they were attached
and formatting twice changes nothing.
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass, field

from lark import Lark, Token, Tree

from mergefile.syntax.ast import Mergefile
from mergefile.syntax.grammar import _PostLexer, grammar_text
from mergefile.syntax.parser import parse_text, tree_to_mergefile
from mergefile.syntax.render_mergefile import FILE, Key, Layout

_lock = threading.Lock()
_sink: list[Token] = []
_ITEMS = ("source", "param", "slice_single", "slice_multi", "module", "slice_source", "kwarg")


@functools.lru_cache(maxsize=1)
def _comment_parser() -> Lark:
    """The Mergefile parser with a hook that records every COMMENT token it skips."""
    return Lark(
        grammar_text(),
        parser="lalr",
        lexer="basic",
        propagate_positions=True,
        maybe_placeholders=False,
        postlex=_PostLexer(),
        lexer_callbacks={"COMMENT": _sink.append},
    )


@dataclass
class _Box:
    """A container: the file, a call's parentheses, or a ``{...}`` block."""

    key: Key
    open: int
    close: float
    depth: int
    items: list[tuple[int, int, Key]] = field(default_factory=list)  # (line, column, node key)


def _pos(tree: Tree) -> tuple[int, int]:
    """Where the AST puts the node's location (a model declaration: its name)."""
    if tree.data == "model_decl":
        name = tree.children[0]
        return name.line, name.column
    return tree.meta.line, tree.meta.column


def _node(tree: Tree) -> Key:
    return ("node",) + _pos(tree)


def _walk(tree: Tree, box: _Box, boxes: list[_Box], layout: Layout) -> None:
    """Register ``tree`` as an item of ``box`` and open the containers it owns."""
    line, col = _pos(tree)
    box.items.append((line, col, _node(tree)))
    kids = [c for c in tree.children if isinstance(c, Tree)]
    if tree.data == "target":
        for kid in kids:
            kind = "call" if kid.data == "call" else "block"
            inner = _Box((kind, line, col), kid.meta.line, kid.meta.end_line, box.depth + 1)
            boxes.append(inner)
            for item in kid.children:
                if isinstance(item, Tree) and item.data in _ITEMS:
                    _walk(item, inner, boxes, layout)
                    if kind == "call":
                        layout.call_params.add(_node(item))
    elif tree.data in ("slice_multi", "module"):
        kind = "slice" if tree.data == "slice_multi" else "module"
        inner = _Box((kind, line, col), tree.meta.line, tree.meta.end_line, box.depth + 1)
        boxes.append(inner)
        for item in kids:
            if item.data in _ITEMS:
                _walk(item, inner, boxes, layout)


def _own_line(lines: list[str], tok: Token) -> bool:
    return not lines[tok.line - 1][: tok.column - 1].strip()


def _blank_before(lines: list[str], line: int) -> bool:
    return line >= 2 and not lines[line - 2].strip()


def _attach(tok: Token, boxes: list[_Box], lines: list[str], layout: Layout) -> None:
    text, line = str(tok).rstrip(), tok.line
    if _own_line(lines, tok):
        box = max((b for b in boxes if b.open < line < b.close), key=lambda b: b.depth)
        entry = (text, _blank_before(lines, line))
        nxt = min((i for i in box.items if i[0] > line), default=None)
        target = layout.leading.setdefault(nxt[2], []) if nxt else layout.closing.setdefault(box.key, [])
        target.append(entry)
        return
    depth_of = {item[2]: b.depth for b in boxes for item in b.items}
    here = [(depth_of[i[2]], -i[1], i[2]) for b in boxes for i in b.items if i[0] == line]
    if here:
        layout.trailing.setdefault(min(here)[2], []).append(text)
        return
    closing = [b for b in boxes if b.close == line and b.key != FILE]
    if closing:
        outer = min(closing, key=lambda b: b.depth)
        if outer.key[0] == "call":  # ") {  # c": the target's line
            layout.trailing.setdefault(("node",) + outer.key[1:], []).append(text)
        else:
            layout.after_close.setdefault(outer.key, []).append(text)
        return
    before = max((i for b in boxes for i in b.items if i[0] < line), default=None)
    if before is None:  # pragma: no cover - code precedes the comment, so a node does
        layout.closing.setdefault(FILE, []).append((text, False))
    else:
        layout.trailing.setdefault(before[2], []).append(text)


def parse_with_layout(text: str, path: str = "<string>") -> tuple[Mergefile, Layout]:
    """Parse Mergefile ``text`` and collect what ``fmt`` must keep (see the module docstring).

    Raises:
        MergefileSyntaxError, ConfigError: as :func:`parse_text` does.
    """
    with _lock:
        _sink.clear()
        try:
            tree = _comment_parser().parse(text)
        except Exception:
            parse_text(text, path)  # raises the worded, located error
            raise
        comments = list(_sink)
    mf = tree_to_mergefile(tree, text, path)
    layout = Layout(source=True)
    boxes = [_Box(FILE, 0, math.inf, 0)]
    for st in tree.children:
        if isinstance(st, Tree):
            _walk(st, boxes[0], boxes, layout)
    lines = text.split("\n")
    starts: dict[int, tuple[int, int]] = {}  # line -> position of the first node on it
    for b in boxes:
        for line, col, _ in b.items:
            starts[line] = min(starts.get(line, (line, col)), (line, col))
    for b in boxes:
        for line, col, key in b.items:
            if starts[line] == (line, col) and _blank_before(lines, line):
                layout.blank_before.add(key)
    for tok in comments:
        _attach(tok, boxes, lines, layout)
    return mf, layout


def format_mergefile(text: str, path: str = "<string>") -> str:
    """``text`` in canonical form, comments kept (``mergebuild fmt``). Idempotent."""
    from mergefile.syntax.render_mergefile import render_mergefile

    mf, layout = parse_with_layout(text, path)
    return render_mergefile(mf, layout)
