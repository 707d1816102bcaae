"""The one table of merge methods. Adding a method: its module, one line here, its test."""

from __future__ import annotations

from mergefile.errors import Loc, unknown
from mergefile.methods import linear, passthrough, task_arithmetic
from mergefile.methods.base import Method

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        linear.METHOD,
        task_arithmetic.METHOD,
        passthrough.METHOD,
    )
}


def get_method(name: str, loc: Loc | None = None) -> Method:
    """The method called ``name``, or a located error with a near-match suggestion."""
    try:
        return METHODS[name]
    except KeyError:
        raise unknown("merge method", name, METHODS, loc) from None
