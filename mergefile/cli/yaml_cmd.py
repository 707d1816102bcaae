"""``mergebuild yaml CONFIG OUT [mergekit-yaml options]``: ``mergekit-yaml`` as written in scripts.

Builds CONFIG into the folder OUT through the mergebuild cache (a second run is a no-op), with
every option of ``mergekit-yaml`` honoured, mapped, or noted (docs/mergekit.md, "Command lines").

Example:
    mergebuild yaml config.yaml merge --copy-tokenizer --allow-crimes --out-shard-size 1B --lazy-unpickle
"""

from __future__ import annotations

import argparse

from mergefile.cli.dropin import add_build_options, run_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config_file", metavar="CONFIG", help="the mergekit YAML config")
    p.add_argument("out_path", metavar="OUT", help="the output folder (any path)")
    add_build_options(p)


def run(args: argparse.Namespace) -> int:
    return run_config(args, args.config_file, args.out_path)
