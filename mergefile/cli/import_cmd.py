"""``mergebuild import merge.yml [--target out/x] [-o FILE]``: a mergekit config as a Mergefile.

Prints (or writes) an equivalent Mergefile: one ``model`` declaration per distinct model, named
after its last path component, and one target per YAML document (a multi-document file's stages
become targets next to the final one). Building either gives bit-identical outputs.

Relative model paths are rewritten for where the Mergefile will live: ``-o FILE``'s folder, or
the current directory when printing (``mergebuild import sub/merge.yml > Mergefile``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from mergefile.cli.main import enter_directory
from mergefile.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="YAML", help="the mergekit config (one or several documents)")
    p.add_argument("--target", default=None, metavar="NAME", help="the target it becomes (default: out/<YAML name>)")
    p.add_argument(
        "--target-prefix",
        default=None,
        metavar="P",
        help="stages of a multi-document file become targets P+name (default: the target's folder)",
    )
    p.add_argument("-o", "--output", default=None, metavar="FILE", help="write the Mergefile here (default: print it)")
    p.add_argument("-C", "--directory", default=None, help="change to DIR first")
    p.add_argument("--lenient", action="store_true", help="unknown keys warn instead of failing (as in mergekit)")


def write_file(path: Path, text: str) -> None:
    """Write a converted file; a missing folder or a read-only place is a user error."""
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot write '{path}': {e.strerror or e}") from None


def run(args: argparse.Namespace) -> int:
    from mergefile.syntax import load_yaml_targets
    from mergefile.syntax.ast import normalize_name
    from mergefile.syntax.convert import yaml_to_mergefile
    from mergefile.syntax.render_mergefile import render_mergefile

    enter_directory(args)
    config = Path(args.config)
    if not config.is_file():
        raise UserError(f"config file '{args.config}' not found")
    target = normalize_name(args.target or f"out/{config.stem}")
    if target in ("", ".", "..") or "\n" in target:
        raise UserError(
            f"'{args.target}' cannot be a target name", hint="name an output folder, e.g. out/x or /scratch/x"
        )
    targets = load_yaml_targets(config, target, prefix=args.target_prefix, lenient=args.lenient)
    out_path = Path(args.output) if args.output else Path.cwd() / "Mergefile"
    mf = yaml_to_mergefile(targets, str(out_path.resolve()))
    header = f"# Imported from {args.config} by `mergebuild import`.\n# Build it: mergebuild {shlex.quote(target)}\n\n"
    text = header + render_mergefile(mf)
    if args.output:
        write_file(out_path, text)
    else:
        sys.stdout.write(text)
    return 0
