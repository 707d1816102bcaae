"""``mergebuild export [-f Mergefile] TARGET [-o FILE]``: a target as a mergekit YAML config.

Prints (or writes) the YAML mergekit reads; a target built from other targets becomes a
multi-document file in the ``mergekit-multi`` format (stages with ``name:``, the target last).
Relative model paths are rewritten for where the YAML will live: ``-o FILE``'s folder, or the
current directory when printing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mergefile.cli.import_cmd import write_file
from mergefile.cli.main import enter_directory
from mergefile.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="TARGET", help="the target to export")
    p.add_argument("-f", "--file", default=None, help="the Mergefile (default: ./Mergefile)")
    p.add_argument("-C", "--directory", default=None, help="change to DIR first")
    p.add_argument("-o", "--output", default=None, metavar="FILE", help="write the YAML here (default: print it)")
    p.add_argument("--lenient", action="store_true", help="for included YAML: unknown keys warn instead of failing")


def run(args: argparse.Namespace) -> int:
    from mergefile.syntax import parse_mergefile
    from mergefile.syntax.render_yaml import render_yaml

    enter_directory(args)
    path = Path(args.file or "Mergefile")
    if not path.is_file():
        raise UserError(f"no Mergefile found at '{path}' (use -f FILE or -C DIR)")
    mf = parse_mergefile(path, lenient=args.lenient)
    out_dir = Path(args.output).resolve().parent if args.output else Path.cwd()
    body = render_yaml(mf, args.target, str(out_dir))
    shown = args.output or "THIS.yml"
    header = (
        f"# Exported from {path} target {args.target} by `mergebuild export`.\n"
        f"# Build it: mergebuild --config {shown} {args.target}   (or mergekit-yaml {shown} OUT)\n"
    )
    if args.output:
        write_file(Path(args.output), header + body)
    else:
        sys.stdout.write(header + body)
    return 0
