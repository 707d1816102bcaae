"""``mergebuild fmt [-f Mergefile] [--check] [--diff]``: rewrite a Mergefile canonically.

Comments and blank lines are kept; formatting twice changes nothing. ``--check`` writes
nothing and exits 1 when the file is not formatted (for CI); ``--diff`` prints what would change
and writes nothing (exit 0 unless ``--check`` is given too).
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from mergefile.cli.main import enter_directory
from mergefile.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--file", default=None, help="the Mergefile (default: ./Mergefile)")
    p.add_argument("-C", "--directory", default=None, help="change to DIR first")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if the file is not formatted")
    p.add_argument("--diff", action="store_true", help="write nothing; print a unified diff of the changes")


def run(args: argparse.Namespace) -> int:
    from mergefile.syntax.layout import format_mergefile

    enter_directory(args)
    path = Path(args.file or "Mergefile")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise UserError(f"cannot read '{path}': {e.strerror or e}") from None
    formatted = format_mergefile(text, str(path))
    if formatted == text:
        return 0
    if args.diff:
        sys.stdout.writelines(
            difflib.unified_diff(
                text.splitlines(keepends=True), formatted.splitlines(keepends=True), str(path), f"{path} (formatted)"
            )
        )
    if args.check:
        print(f"{path}: not formatted (run: mergebuild fmt -f {path})", file=sys.stderr)
    if args.check or args.diff:
        return 1 if args.check else 0
    path.write_text(formatted, encoding="utf-8")
    return 0
