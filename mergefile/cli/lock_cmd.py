"""``mergebuild lock [--check] [--update]``: write or check ``Mergefile.lock``.

Like a package manager's lock: hub references already pinned keep their commit (builds use
it), new ones are resolved now; ``--update`` re-resolves every hub reference (``main`` moves
on). ``--check`` writes nothing and exits 1 when writing would change the lock, printing what
differs — for CI.
"""

from __future__ import annotations

import argparse
import os

from mergefile.cli.main import add_recipe_options, enter_directory, load_recipe, open_store


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_recipe_options(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--check", action="store_true", help="exit 1 if the lock is missing or out of date; write nothing")
    g.add_argument("--update", action="store_true", help="re-resolve every hub reference instead of keeping its pin")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mergefile.errors import UserError
    from mergefile.plan.graph import build_graph, build_order
    from mergefile.plan.inputs import ResolveOptions
    from mergefile.plan.lockfile import Lockfile, diff_lock, lock_path, make_lock, read_lock
    from mergefile.plan.planner import Planner
    from mergefile.run.usage import all_targets

    if args.config:
        raise UserError(
            "mergebuild lock reads a Mergefile, not --config",
            hint='include "merge.yml" as out/x in a Mergefile, or use -f FILE',
        )
    enter_directory(args)
    mf = load_recipe(args)
    path = lock_path(mf.path)
    old = read_lock(path)
    pins = old.pins if old is not None and not args.update else {}
    with open_store(args) as store:
        order = build_order(mf, build_graph(mf), all_targets(mf))
        planner = Planner(
            mf, ResolveOptions(allow_pickle=args.allow_pickle, convert_dir=str(store.root / "converted"), pins=pins)
        )
        plans = [planner.plan(n) for n in order]
        new = make_lock(path, plans, store.stat.digests, planner.base_dir)
    changes = [msg for _, msg in diff_lock(old or Lockfile(path), new)]
    hub = sum(1 for k in new.models if k.startswith("hf:"))
    files = sum(len(m["files"]) for m in new.models.values())
    if args.check:
        if old is None:
            print(f"no {path.name}: run `mergebuild lock`")
            return 1
        for msg in changes:
            print(msg)
        print(f"{path.name} is " + ("out of date" if changes else "up to date"))
        return 1 if changes else 0
    if old is not None and old.to_json() == new.to_json():
        print(f"{path.name} is up to date ({hub} hub model(s), {len(new.models) - hub} local, {files} files)")
        return 0
    tmp = Path(f"{path}.tmp")
    tmp.write_text(new.to_json())
    os.replace(tmp, path)  # readers see the old lock or the new one, never half
    for msg in changes if old is not None else []:
        print(f"  {msg}")
    print(f"wrote {path.name}: {hub} hub model(s) pinned, {len(new.models) - hub} local model(s), {files} file digests")
    return 0
