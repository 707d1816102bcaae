"""Typed, located errors.

Every error a user can cause is a :class:`UserError`: the CLI prints its message as one
paragraph and exits with status 2, never a traceback. Internal bugs stay ordinary exceptions.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Loc:
    """A position in a recipe file (1-based line and column)."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class UserError(Exception):
    """Bad input: a recipe, a model, a flag. Exit code 2, one clear paragraph."""

    exit_code = 2

    def __init__(self, message: str, loc: Loc | None = None, hint: str | None = None):
        self.message = message
        self.loc = loc
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        text = f"{self.loc}: {self.message}" if self.loc else self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


class MergefileSyntaxError(UserError):
    """The Mergefile text does not parse."""


class ConfigError(UserError):
    """The recipe parses but means something impossible (unknown name, bad value, cycle)."""


class LockedError(UserError):
    """Another mergebuild process holds the output."""


class TensorFailed(Exception):
    """Merging one tensor raised an error that is not the recipe's fault (a library's, or a bug).

    Exit code 1 and one paragraph naming the tensor, the method and the cause, instead of a
    traceback from deep inside torch; ``MERGEBUILD_DEBUG=1`` prints the traceback too.
    """

    exit_code = 1

    def __init__(self, target: str, tensor: str, method: str, cause: BaseException):
        self.target, self.tensor, self.method, self.cause = target, tensor, method, cause
        first = (str(cause).strip().splitlines() or [""])[0]
        super().__init__(
            f"{target}: merging {tensor} ({method}) failed: {type(cause).__name__}: {first} "
            "(nothing half-written was kept; this is mergebuild's or a library's fault, not the recipe's: "
            "set MERGEBUILD_DEBUG=1 for the traceback)"
        )


def did_you_mean(name: str, choices: Iterable[str]) -> str | None:
    """A 'did you mean' hint for a misspelled name, or None when nothing is close."""
    close = difflib.get_close_matches(name, sorted(set(choices)), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def unknown(kind: str, name: str, choices: Iterable[str], loc: Loc | None = None) -> ConfigError:
    """Error for an unknown name with a near-match suggestion."""
    choices = list(choices)
    hint = did_you_mean(name, choices)
    if hint is None and choices and len(choices) <= 12:
        hint = "known: " + ", ".join(sorted(choices))
    return ConfigError(f"unknown {kind} '{name}'", loc, hint)
