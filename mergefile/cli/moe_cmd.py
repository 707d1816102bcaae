"""``mergebuild moe CONFIG OUT [options]``: ``mergekit-moe`` as written in scripts.

The mergekit-moe config is read by the same loader as ``mergebuild --config`` (it has
``experts:``) and built through the cache. mergekit-moe's own flags are accepted:
``--load-in-4bit`` / ``--load-in-8bit`` (noted: gate prompts are run in the base model's dtype)
and ``--i-understand-this-is-not-useful-without-training`` (mapped: ``allow_identical_experts``, the same model as several experts).
"""

from __future__ import annotations

import argparse

from mergefile.cli.dropin import add_build_options, run_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config_file", metavar="CONFIG", help="the mergekit-moe YAML config")
    p.add_argument("out_path", metavar="OUT", help="the output folder (any path)")
    p.add_argument("--load-in-4bit", action="store_true", help="mergekit-moe's flag (noted)")
    p.add_argument("--load-in-8bit", action="store_true", help="mergekit-moe's flag (noted)")
    p.add_argument(
        "--i-understand-this-is-not-useful-without-training",
        dest="allow_all_same",
        action="store_true",
        help="allow the same model as several experts",
    )
    add_build_options(p)


def run(args: argparse.Namespace) -> int:
    extra = []
    if args.load_in_4bit or args.load_in_8bit:
        extra.append("note: --load-in-4bit/8bit changes nothing: gate prompts run in the base model's dtype")
    settings = {"allow_identical_experts": True} if args.allow_all_same else None
    return run_config(args, args.config_file, args.out_path, extra_notes=tuple(extra), settings=settings)
