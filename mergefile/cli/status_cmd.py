"""``mergebuild status [TARGET...]``: the CI question, with a one-line summary per target.

Exit 0 when everything requested is up to date, 1 when something is stale, 2 on error —
make's ``-q`` contract, spelled as a verb for CI scripts.
"""

from __future__ import annotations

import argparse

from mergefile.cli.main import add_recipe_options, enter_directory, load_recipe, open_store, requested_targets


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs="*", metavar="TARGET")
    add_recipe_options(p)
    p.add_argument("--explain", action="store_true", help="say why each stale target is stale")
    p.add_argument("-v", "--verbose", action="store_true")


def run(args: argparse.Namespace) -> int:
    from mergefile.cli.render import explain_lines
    from mergefile.run.build import BuildOptions, build

    enter_directory(args)
    mf = load_recipe(args)
    with open_store(args, read_only=True) as store:
        report = build(
            mf, requested_targets(args, mf), store, BuildOptions(dry_run=True, allow_pickle=args.allow_pickle)
        )
    for r in report.targets:
        if args.explain:
            print("\n".join(explain_lines(r, args.verbose)))
        else:
            st = r.status
            print(f"{r.name}: " + ("up to date" if st.up_to_date else f"stale ({len(st.stale)} tensors)"))
    return 0 if report.up_to_date else 1
