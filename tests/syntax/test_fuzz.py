"""No input, however broken, escapes as anything but a located UserError (no tracebacks)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mergefile.errors import UserError
from mergefile.syntax import parse_text

_PIECES = [
    "model",
    "include",
    "as",
    "slice",
    "hf",
    "true",
    "false",
    "out/a",
    "m",
    "weight",
    "t",
    "=",
    ":",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ";",
    "\n",
    " ",
    '"x"',
    '"',
    "0",
    "1.5",
    "-2",
    "1e-3",
    "[0:4]",
    "[mlp]",
    "#c\n",
    "\\\n",
    "@",
    "\\",
    "1.2.3",
    '"a\\q"',
    "*",
]


def _check(text: str) -> None:
    try:
        parse_text(text, "F")
    except UserError as e:
        assert e.loc is None or (e.loc.line >= 1 and e.loc.column >= 1), str(e)
        assert "Token(" not in str(e) and "_NL" not in str(e) and "$END" not in str(e), str(e)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=25).map("".join))
def test_token_soup_never_crashes(text: str) -> None:
    _check(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_arbitrary_text_never_crashes(text: str) -> None:
    _check(text)
