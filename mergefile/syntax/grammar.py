"""Lark machinery for the Mergefile: grammar loading, the cached parser, human error messages.

Everything Lark-specific about *syntax* lives here, so ``parser.py`` only turns trees into AST.
Syntax errors leave this module as :class:`MergefileSyntaxError` with a location, the offending
text and what was expected in words -- never Lark terminal names.
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from mergefile.errors import Loc, MergefileSyntaxError, did_you_mean

_OPEN = {"(": ")", "[": "]", "{": "}"}
_CLOSE = {v: k for k, v in _OPEN.items()}
STATEMENT_KEYWORDS = ("model", "include")
BLOCK_KEYWORDS = ("slice", "module")


def grammar_text() -> str:
    """The grammar source: the installed package copy, else the source checkout's ``grammar/``."""
    try:
        res = importlib.resources.files("mergefile").joinpath("grammar/mergefile.lark")
        if res.is_file():
            return res.read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        pass
    checkout = Path(__file__).resolve().parents[2] / "grammar" / "mergefile.lark"
    return checkout.read_text(encoding="utf-8")


class _BracketError(Exception):
    """Raised by the post-lexer for a bracket that is unmatched or never closed."""

    def __init__(self, message: str, line: int, column: int):
        super().__init__(message)
        self.message, self.line, self.column = message, line, column


class _PostLexer:
    """Newline handling the grammar cannot express.

    ``;`` becomes ``_NL``; runs of ``_NL`` collapse into one; ``_NL`` inside ``(...)``/``[...]``
    is dropped so lists and calls may span lines. It also checks bracket pairing, because
    "unclosed '{' opened at line 3" is a far better message than an LALR state dump.
    """

    always_accept = ("_NL", "SEMICOLON")

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        stack: list[Token] = []
        last_nl = True
        for tok in stream:
            if tok.type == "SEMICOLON" and not _in_parens(stack):
                tok = Token.new_borrow_pos("_NL", tok.value, tok)
            if tok.type == "_NL":
                if _in_parens(stack) or last_nl:
                    continue
                last_nl = True
                yield tok
                continue
            last_nl = False
            if tok.value in _OPEN and tok.type != "STRING":
                stack.append(tok)
            elif tok.value in _CLOSE and tok.type != "STRING":
                _pop_bracket(stack, tok)
            yield tok
        if stack:
            opener = stack[-1]
            raise _BracketError(
                f"unclosed '{opener.value}' opened at line {opener.line} (reached end of file)",
                opener.line,
                opener.column,
            )


def _in_parens(stack: list[Token]) -> bool:
    return bool(stack) and stack[-1].value in "(["


def _pop_bracket(stack: list[Token], tok: Token) -> None:
    if not stack:
        raise _BracketError(f"unmatched '{tok.value}' (nothing to close)", tok.line, tok.column)
    opener = stack[-1]
    if _OPEN[opener.value] != tok.value:
        raise _BracketError(
            f"'{tok.value}' does not match '{opener.value}' opened at line {opener.line}"
            f" (expected '{_OPEN[opener.value]}')",
            tok.line,
            tok.column,
        )
    stack.pop()


def _cache_file() -> str | bool:
    """Where Lark keeps its grammar analysis between runs (it is ~10x faster than rebuilding).

    Lark names the file by a hash of the grammar and options, so a changed grammar never
    loads a stale table. A cache that cannot be written is only a slower start.
    """
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = os.path.join(root, "mergebuild")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return False
    return os.path.join(folder, "grammar")


@functools.lru_cache(maxsize=1)
def get_parser() -> Lark:
    """The LALR parser, built once per process (grammar analysis is the slow part)."""
    lark_logger = logging.getLogger("lark")
    level = lark_logger.level
    lark_logger.setLevel(logging.CRITICAL)  # a failed cache write is not the user's problem
    try:
        return Lark(
            grammar_text(),
            parser="lalr",
            lexer="basic",
            propagate_positions=True,
            maybe_placeholders=False,
            postlex=_PostLexer(),
            cache=_cache_file(),
        )
    finally:
        lark_logger.setLevel(level)


def parse_tree(text: str, path: str) -> Tree:
    """Parse ``text`` to a Lark tree, or raise a located, worded :class:`MergefileSyntaxError`."""
    try:
        return get_parser().parse(text)
    except _BracketError as e:
        raise MergefileSyntaxError(e.message, Loc(path, e.line, e.column)) from None
    except UnexpectedCharacters as e:
        raise _char_error(e, text, path) from None
    except UnexpectedToken as e:
        raise _token_error(e, text, path) from None
    except UnexpectedInput as e:  # pragma: no cover - LALR raises only the two above
        raise MergefileSyntaxError("syntax error", Loc(path, e.line, e.column)) from None


# ---- wording -------------------------------------------------------------------------------

_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": "a quoted string",
    "_NL": "end of line",
    "$END": "end of file",
    "COLON": "':'",
    "EQUAL": "'='",
    "COMMA": "','",
    "LPAR": "'('",
    "RPAR": "')'",
    "LSQB": "'['",
    "RSQB": "']'",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "SEMICOLON": "';'",
    "MODEL": "'model'",
    "INCLUDE": "'include'",
    "AS": "'as'",
    "SLICE": "'slice'",
    "MODULE": "'module'",
    "PLUS": "'+'",
    "HF": "hf(...)",
    "TRUE": "'true'",
    "FALSE": "'false'",
}
_VALUE_START = {"NUMBER", "STRING", "NAME", "LSQB", "HF"}
VALUE_WORDS = "a value (number, string, name, list or hf(...))"


def expected_words(expected: set[str]) -> str:
    """``{'COLON', 'EQUAL'}`` -> ``"':' or '='"``; a full value start set reads as 'a value'."""
    names = set(expected)
    if "_NL" in names:
        names.discard("$END")  # "end of line" says it
    words: list[str] = []
    if {"NAME", "MODEL", "INCLUDE"} <= names:
        names -= {"NAME", "MODEL", "INCLUDE"}
        words.append("a statement (model, include, a target or a variable)")
    if _VALUE_START <= names:
        names -= _VALUE_START | {"TRUE", "FALSE"}
        words.append(VALUE_WORDS)
    order = list(_WORDS)
    for name in sorted(names, key=lambda n: order.index(n) if n in order else len(order)):
        words.append(_WORDS.get(name, name.lower()))
    if len(words) <= 1:
        return "".join(words) or "nothing more"
    return ", ".join(words[:-1]) + " or " + words[-1]


def describe(tok: Token) -> str:
    """How the offending token reads in a message."""
    if tok.type == "NAME":
        return f"name '{tok.value}'"
    if tok.type == "NUMBER":
        return f"number {tok.value}"
    if tok.type == "STRING":
        return f"string {tok.value}"
    if tok.type == "$END" or (tok.type == "_NL" and tok.value == ""):
        return "end of file"
    if tok.type == "_NL":
        return "';'" if tok.value == ";" else "end of line"
    if tok.type in ("MODEL", "INCLUDE", "AS", "SLICE", "MODULE", "HF", "TRUE", "FALSE"):
        return f"keyword '{tok.value}'"
    return f"'{tok.value}'"


def _char_error(e: UnexpectedCharacters, text: str, path: str) -> MergefileSyntaxError:
    loc = Loc(path, e.line, e.column)
    ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else ""
    if ch == '"':
        return MergefileSyntaxError("unterminated string", loc, "a string must end with '\"' on the same line")
    path_text = re.match(r"(\.{1,2}/|/|\.[A-Za-z_])[^\s:{}()\[\]=,;\"]*", text[e.pos_in_stream :])
    if path_text:  # a folder written bare: ../out/x, /scratch/x, .hidden
        word = path_text.group(0)
        return MergefileSyntaxError(f"a path must be quoted: {word}", loc, f'write "{word}"')
    if ch.isdigit() or ch in "+-.":
        end = e.pos_in_stream + 1
        while end < len(text) and (text[end].isalnum() or text[end] in "._+-"):
            end += 1
        bad = text[e.pos_in_stream : end]
        return MergefileSyntaxError(f"bad number '{bad}'", loc, "expected a number like 3, -0.5 or 1e-3")
    if ch == "\\":
        return MergefileSyntaxError("unexpected '\\'", loc, "a line continuation '\\' must be last on its line")
    return MergefileSyntaxError(f"unexpected character {ch!r}", loc)


# ---- token errors: context from the tokens before the error ---------------------------------


@dataclass
class _Ctx:
    """What the error rules look at: the bad token, what Lark expected, and what came before."""

    tok: Token
    expected: set[str]
    before: list[Token]  # tokens before the error, newest last (after post-lexing)
    opened: list[Token]  # brackets still open at the error, innermost last
    path: str

    def prev(self) -> Token | None:
        return self.before[-1] if self.before else None

    def line_start(self) -> Token | None:
        """First token of the current statement or block item."""
        for i in range(len(self.before) - 1, -1, -1):
            if self.before[i].type in ("_NL", "LBRACE"):
                return self.before[i + 1] if i + 1 < len(self.before) else None
        return self.before[0] if self.before else None

    def loc(self, tok: Token | None = None) -> Loc:
        tok = tok or self.tok
        return Loc(self.path, tok.line or 1, tok.column or 1)


def _tokens_before(text: str, pos: int) -> list[Token]:
    """Re-lex ``text`` (post-lexed, as the parser saw it) up to the error position."""
    out: list[Token] = []
    try:
        for tok in get_parser().lex(text):
            if tok.start_pos is not None and tok.start_pos >= pos:
                break
            out.append(tok)
    except Exception:  # noqa: BLE001 - only context for a message; the parse error stands
        pass
    return out


def _open_brackets(tokens: list[Token]) -> list[Token]:
    stack: list[Token] = []
    for tok in tokens:
        if tok.type in ("LPAR", "LSQB", "LBRACE"):
            stack.append(tok)
        elif tok.type in ("RPAR", "RSQB", "RBRACE") and stack:
            stack.pop()
    return stack


def _token_error(e: UnexpectedToken, text: str, path: str) -> MergefileSyntaxError:
    tok = e.token
    if tok.type == "$END":
        tok = Token("$END", "", len(text), *_end_position(text))
    pos = tok.start_pos if tok.start_pos is not None else len(text)
    before = _tokens_before(text, pos)
    # ``accepts`` replays the real stack; ``expected`` is the merged LALR state's (too wide).
    expected = set(e.accepts or ()) if e.interactive_parser is not None else set()
    ctx = _Ctx(tok, expected or set(e.expected), before, _open_brackets(before), path)
    for rule in _RULES:
        err = rule(ctx)
        if err is not None:
            return err
    return MergefileSyntaxError(f"unexpected {describe(tok)}; expected {expected_words(ctx.expected)}", ctx.loc())


def _end_position(text: str) -> tuple[int, int]:
    lines = text.split("\n")
    return len(lines), len(lines[-1]) + 1


Rule = Callable[[_Ctx], "MergefileSyntaxError | None"]


def _misspelled_keyword(ctx: _Ctx) -> MergefileSyntaxError | None:
    """``modle base = ...``: the first word of a statement is close to a keyword."""
    first = ctx.line_start()
    if first is None or first.type != "NAME" or ctx.prev() is not first:
        return None
    in_block = bool(ctx.opened) and ctx.opened[-1].type == "LBRACE"
    keywords = BLOCK_KEYWORDS if in_block else STATEMENT_KEYWORDS
    hint = did_you_mean(first.value, keywords)
    if hint is None:
        return None
    where = "block item" if in_block else "statement"
    return MergefileSyntaxError(f"unknown {where} '{first.value}'", ctx.loc(first), hint)


def _missing_colon(ctx: _Ctx) -> MergefileSyntaxError | None:
    """``out/x ties {``: a name at statement start followed by something other than ':'/'='."""
    if not {"COLON", "EQUAL"} <= ctx.expected or ctx.opened:
        return None
    name = ctx.prev()
    return MergefileSyntaxError(
        f"unexpected {describe(ctx.tok)}; expected ':' after target name '{name.value}'"
        if name is not None
        else f"unexpected {describe(ctx.tok)}; expected ':'",
        ctx.loc(),
        "or '=' to assign a variable",
    )


def _hf_repo(ctx: _Ctx) -> MergefileSyntaxError | None:
    prev = ctx.prev()
    if ctx.expected != {"STRING"} or prev is None or prev.type != "LPAR":
        return None
    return MergefileSyntaxError(
        f"unexpected {describe(ctx.tok)}; hf() needs the repo id as a quoted string first",
        ctx.loc(),
        'e.g. hf("org/name", revision="main")',
    )


def _empty_brackets(ctx: _Ctx) -> MergefileSyntaxError | None:
    prev = ctx.prev()
    if ctx.tok.type != "RSQB" or prev is None or prev.type != "LSQB":
        return None
    return MergefileSyntaxError("empty '[]': expected a filter like [mlp] or a layer range like [0:24]", ctx.loc(prev))


def _slice_range(ctx: _Ctx) -> MergefileSyntaxError | None:
    """A slice source without ``[start:end]``."""
    if "LSQB" not in ctx.expected or ctx.tok.type == "LSQB":
        return None
    first = ctx.line_start()
    if not _in_slice_block(ctx) and (first is None or first.type != "SLICE"):
        return None
    src = ctx.prev()
    shown = f" after '{src.value}'" if src is not None and src.type in ("NAME", "STRING") else ""
    return MergefileSyntaxError(
        f"unexpected {describe(ctx.tok)}; a slice source needs a layer range{shown}",
        ctx.loc(),
        "e.g. slice math[0:24]",
    )


def _in_slice_block(ctx: _Ctx) -> bool:
    if not ctx.opened or ctx.opened[-1].type != "LBRACE":
        return False
    idx = next(i for i in range(len(ctx.before) - 1, -1, -1) if ctx.before[i] is ctx.opened[-1])
    return idx > 0 and ctx.before[idx - 1].type == "SLICE"


def _second_block(ctx: _Ctx) -> MergefileSyntaxError | None:
    prev = ctx.prev()
    if ctx.tok.type != "LBRACE" or prev is None or prev.type != "RBRACE":
        return None
    return MergefileSyntaxError(
        "unexpected '{': a target has only one block", ctx.loc(), "merge the two blocks into one"
    )


def _hints(ctx: _Ctx) -> MergefileSyntaxError | None:
    """Generic message plus a hint for a few common slips."""
    hint = None
    prev, first = ctx.prev(), ctx.line_start()
    opener = ctx.opened[-1] if ctx.opened else None
    if ctx.tok.type == "SEMICOLON" and ctx.opened:
        hint = f"';' cannot end a statement inside '{ctx.opened[-1].value}'; use ',' between items"
    elif ctx.tok.type == "LBRACE" and prev is not None and prev.type == "_NL":
        hint = "a block must start on the same line as its target"
    elif ctx.tok.type == "COLON" and ctx.opened and ctx.opened[-1].type == "LBRACE":
        hint = f"'{{' opened at line {ctx.opened[-1].line} is not closed"
    elif ctx.tok.type == "COMMA" and {"NAME", "_NL"} <= ctx.expected:  # a phony group
        hint = "separate names with spaces, not ','"
    elif opener is not None and opener.type != "LBRACE" and ctx.tok.line > opener.line:
        hint = f"'{opener.value}' opened at line {opener.line} is not closed"
    elif first is not None and first.type == "NAME" and not _defines(ctx, first):
        hint = did_you_mean(first.value, BLOCK_KEYWORDS if opener else STATEMENT_KEYWORDS)
    if hint is None:
        return None
    return MergefileSyntaxError(
        f"unexpected {describe(ctx.tok)}; expected {expected_words(ctx.expected)}",
        ctx.loc(),
        hint,
    )


def _defines(ctx: _Ctx, first: Token) -> bool:
    """``first`` is followed by ':' or '=' -- a definition, so not a misspelled keyword."""
    idx = next(i for i, t in enumerate(ctx.before) if t is first)
    return idx + 1 < len(ctx.before) and ctx.before[idx + 1].type in ("COLON", "EQUAL")


_RULES: tuple[Rule, ...] = (
    _misspelled_keyword,
    _missing_colon,
    _hf_repo,
    _empty_brackets,
    _slice_range,
    _second_block,
    _hints,
)
