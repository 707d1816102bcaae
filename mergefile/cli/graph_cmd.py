"""``mergebuild graph [TARGET...] [-o FILE] [--format dot|svg|png]``: draw the target graph.

DOT is written by mergebuild itself; SVG and PNG are rendered by Graphviz's ``dot`` program
when it is installed. Stale targets are marked, from the same dry-run comparison ``-n`` makes.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from mergefile.cli.main import add_recipe_options, enter_directory, load_recipe, open_store
from mergefile.errors import UserError, unknown

FORMATS = ("dot", "svg", "png")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs="*", metavar="TARGET", help="draw these and what they need (default: everything)")
    add_recipe_options(p)
    p.add_argument("-o", "--output", default=None, metavar="FILE", help="write here (default: standard output)")
    p.add_argument(
        "--format", choices=FORMATS, default=None, help="dot, svg or png (default: from -o's suffix, else dot)"
    )
    p.add_argument("--no-status", action="store_true", help="do not compare with outputs (no stale marks; faster)")


def _format(args) -> str:
    if args.format:
        return args.format
    suffix = Path(args.output).suffix.lower().lstrip(".") if args.output else ""
    return suffix if suffix in FORMATS else "dot"


def _note(st) -> str:
    """A one-line why for a stale target: how many tensors, and the most common reason."""
    if st.up_to_date:
        return "up to date"
    if not st.stale:
        return "stale: " + ("tensors removed" if st.removed else "config/tokenizer files changed")
    reason, n = Counter(s.reason.value for s in st.stale.values()).most_common(1)[0]
    return f"stale: {len(st.stale)}/{len(st.kp.plan.jobs)} tensors ({reason})"


def _states(mf, names: list[str], store, allow_pickle: bool, status: bool):
    """(plans, states) for the merge targets among ``names``."""
    from mergefile.plan.graph_dot import TargetState
    from mergefile.run.build import BuildOptions, plan_build

    planned = plan_build(mf, names, store, BuildOptions(dry_run=True, allow_pickle=allow_pickle))
    plans = {plan.name: plan for plan, _, _, _ in planned}
    states = {} if not status else {plan.name: TargetState(not st.up_to_date, _note(st)) for plan, _, st, _ in planned}
    return plans, states


def render(dot_text: str, fmt: str, output: str | None) -> None:
    """Write DOT as is, or have Graphviz render it."""
    if fmt == "dot":
        if output:
            Path(output).write_text(dot_text)
        else:
            sys.stdout.write(dot_text)
        return
    exe = shutil.which("dot")
    if exe is None:
        raise UserError(
            f"--format {fmt} needs Graphviz's 'dot' program, which is not on PATH",
            hint="install graphviz (apt install graphviz, brew install graphviz), or write --format dot and render it elsewhere",
        )
    cmd = [exe, f"-T{fmt}"] + (["-o", output] if output else [])
    r = subprocess.run(cmd, input=dot_text.encode(), capture_output=True)
    if r.returncode != 0:
        raise UserError(f"dot failed to render the graph: {r.stderr.decode(errors='replace').strip()}")
    if not output:
        sys.stdout.buffer.write(r.stdout)


def run(args: argparse.Namespace) -> int:
    from mergefile.plan.graph import build_graph, normalize_name
    from mergefile.plan.graph_dot import selection, target_graph_dot
    from mergefile.syntax.ast import Target

    enter_directory(args)
    mf = load_recipe(args)
    fmt = _format(args)
    g = build_graph(mf)
    rules = mf.targets()
    requested = [mf.statements[0].name] if args.config else list(args.targets)
    for r in requested:
        if normalize_name(r) not in rules:
            raise unknown("target", r, rules)
    only = selection(g, requested)
    names = [n for n, rule in rules.items() if isinstance(rule, Target) and (only is None or n in only)]
    with open_store(args, read_only=True) as store:
        plans, states = _states(mf, names, store, args.allow_pickle, not args.no_status)
    render(target_graph_dot(mf, g, plans, states, only), fmt, args.output)
    if args.output:
        print(f"wrote {args.output}", file=sys.stderr)
    return 0
