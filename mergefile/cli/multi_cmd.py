"""``mergebuild multi CONFIG --intermediate-dir DIR --out-path OUT``: ``mergekit-multi``.

Each named document of CONFIG is built into ``DIR/<name>``, the unnamed one into OUT, as one
graph through the cache: a stage whose document did not change is not rebuilt.
``--lazy`` (mergekit's default: skip merges that exist) is what a build always does;
``--no-lazy`` rebuilds every stage, as ``-B`` does.
"""

from __future__ import annotations

import argparse
import os

from mergefile.cli.dropin import add_build_options, run_config
from mergefile.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config_file", metavar="CONFIG", help="the multi-document mergekit YAML")
    p.add_argument("--out-path", default=None, help="where the final (unnamed) document's merge goes")
    p.add_argument("-I", "--intermediate-dir", default=None, help="where each named stage goes (DIR/<name>)")
    p.add_argument(
        "--lazy",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="skip stages that are up to date (--no-lazy: rebuild them all)",
    )
    add_build_options(p)


def run(args: argparse.Namespace) -> int:
    if not args.intermediate_dir:
        raise UserError(
            "multi needs --intermediate-dir DIR (or -I DIR): the folder of the named stages",
            hint="mergebuild multi merge.yml -I stages --out-path out/final",
        )
    if not args.out_path:
        raise UserError(
            "multi needs --out-path OUT: the folder of the final (unnamed) document",
            hint="to build the stages alone, name the last one's folder as OUT",
        )
    if not args.lazy:
        args.always_make = True
    prefix = os.path.join(args.intermediate_dir, "")
    return run_config(args, args.config_file, args.out_path, prefix=prefix)
