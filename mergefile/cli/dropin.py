"""What the mergekit-shaped verbs share: ``yaml``, ``multi`` and ``moe`` are the build command
with ``--config``, told by mergekit's flags (``cli/mergekit_options.py``).

They go through the same loader, cache, up-to-date stamps and aliases as
``mergebuild --config CONFIG OUT``, so a notebook cell that runs ``mergebuild yaml`` twice
computes nothing the second time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from mergefile.cli import mergekit_options as mk
from mergefile.cli.main import make_parser, parse_size


def add_build_options(p: argparse.ArgumentParser) -> None:
    """mergebuild's own options that make sense beside a mergekit command line."""
    p.add_argument("-C", "--directory", default=None, help="change to DIR first")
    p.add_argument("--cache-dir", default=None, help="cache folder (default: $MERGEBUILD_CACHE_DIR or ./cache)")
    p.add_argument("--cache-size", type=parse_size, default=None, help="cache size limit (e.g. 100G)")
    p.add_argument("--allow-pickle", action="store_true", help="read pickled .bin weights (weights-only loading)")
    p.add_argument("--lenient", action="store_true", help="unknown keys in the YAML warn instead of failing")
    p.add_argument("-n", "--dry-run", action="store_true", help="say what would be recomputed, build nothing")
    p.add_argument("-B", "--always-make", action="store_true", help="rebuild everything")
    p.add_argument("-q", "--question", action="store_true", help="exit 1 if anything is stale")
    p.add_argument("--explain", action="store_true", help="say why each stale tensor is stale")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--memory-budget", type=parse_size, default=None, help="bytes of tensors in flight")
    p.add_argument("--no-wait", action="store_true", help="fail instead of waiting when the output is being built")
    mk.add_mergekit_options(p)


def build_namespace(args: argparse.Namespace, config: str, out: str, values: dict[str, object]) -> argparse.Namespace:
    """The build command's arguments for ``--config CONFIG OUT`` with these options."""
    ns = make_parser().parse_args([])
    for name in (
        "directory",
        "cache_dir",
        "cache_size",
        "allow_pickle",
        "lenient",
        "dry_run",
        "always_make",
        "question",
        "explain",
        "json",
        "memory_budget",
        "no_wait",
    ):
        setattr(ns, name, getattr(args, name))
    ns.config, ns.targets = config, [out]
    for name, value in mk.build_settings(values).items():
        setattr(ns, name, value)
    return ns


def run_config(
    args: argparse.Namespace,
    config: str,
    out: str,
    prefix: str | None = None,
    extra_notes: tuple[str, ...] = (),
    settings: dict | None = None,
) -> int:
    """Build ``config`` as target ``out`` as ``mergebuild --config`` does, mergekit's flags applied."""
    from mergefile.cli.main import (
        build_command,
        load_recipe,
        stamp_request,
        stampable_command,
        stamped_noop,
    )

    values = mk.given(args)
    ns = build_namespace(args, config, out, values)
    ns.target_prefix = prefix
    if settings:
        ns.target_settings = {**(getattr(ns, "target_settings", None) or {}), **settings}
    quiet = bool(values.get("quiet"))
    for line in (*mk.notes(values), *extra_notes) if not quiet else ():
        print(f"mergebuild: {line}", file=sys.stderr)
    hub_cache = getattr(ns, "hub_cache", None)
    if hub_cache:
        mk.set_hub_cache(hub_cache)
    argv = list(getattr(args, "command_line", None) or [])
    try:
        ns.start_cwd = os.getcwd()
    except OSError:
        ns.start_cwd = None
    if ns.directory:
        from mergefile.cli.main import enter_directory

        enter_directory(ns)
    started_ns = time.time_ns()
    request = stamp_request(ns)
    if stampable_command(ns) and argv:
        done = stamped_noop(ns, request, argv)
        if done is not None:
            return done
    mf = load_recipe(ns)
    ns.device, note = mk.resolve_device(ns.device)
    if note and not quiet:
        print(f"mergebuild: {note}", file=sys.stderr)
    return build_command(ns, mf, argv, request, started_ns)
