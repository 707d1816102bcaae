"""``mergebuild log [RUN]``: what past builds did, from the per-run logs in the cache.

Without RUN: one line per run (when, what it built, computed vs. from cache, bytes, time).
With RUN (a run id, a unique prefix, ``last`` or ``-N`` for the N-th from last): that run's
records, one per tensor, like reading ``.ninja_log``.
"""

from __future__ import annotations

import argparse
import json
import time

from mergefile.cli.main import add_recipe_options, enter_directory, open_store


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_spec", nargs="?", metavar="RUN", help="a run id or prefix, 'last', or -N (N-th from last)")
    add_recipe_options(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="runs to list (default 20, 0: all)")


def _when(t: float | None) -> str:
    return "?" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _list(args, store) -> int:
    from mergefile.cli.render import human_bytes
    from mergefile.run.history import recent

    runs = recent(store.log, args.limit)
    if args.json:
        print(json.dumps([r.to_json() for r in runs], indent=2))
        return 0
    if not runs:
        print(f"no builds logged yet in {store.log.directory}")
        return 0
    for r in runs:
        secs = f"{r.seconds:.2f}s" if r.seconds is not None else "?"
        state = "" if r.finished else "  (killed or still running)"
        if r.error:
            state = f"  (failed: {r.error})"
        what = ", ".join(r.targets) or "-"
        work = (
            f"{r.computed + r.recomputed} computed, {r.hits} from cache"
            if r.computed + r.recomputed + r.hits
            else "up to date"
        )
        print(
            f"{r.run_id}  {_when(r.start)}  {secs:>8}  {work}; read {human_bytes(r.bytes_read)}, "
            f"wrote {human_bytes(r.bytes_written)}  [{what}]{state}"
        )
    return 0


def _show(args, store) -> int:
    from mergefile.run.history import NODE_STATUSES, find_run, summarize

    run_id = find_run(store.log, args.run_spec)
    records = store.log.read(run_id)
    if args.json:
        print(json.dumps({"run_id": run_id, "records": records}, indent=2))
        return 0
    s = summarize(run_id, records)
    start = s.start or 0.0
    print(f"run {run_id}: mergebuild {' '.join(s.argv)}")
    print(f"{'t+s':>8} {'secs':>8} {'status':<11} {'read':>9} {'written':>9}  target  tensor")
    for rec in records:
        status = rec.get("status")
        if status is None:
            continue
        t = rec.get("time", start) - start
        secs = rec.get("seconds")
        cols = [f"{t:8.3f}", f"{secs:8.4f}" if isinstance(secs, (int, float)) else " " * 8, f"{status:<11}"]
        if status in NODE_STATUSES:
            cols += [f"{rec.get('bytes_read', 0):>9}", f"{rec.get('bytes_written', 0):>9}"]
        else:
            cols += [" " * 9, " " * 9]
        print(" ".join(cols) + f"  {rec.get('target', '')}  {rec.get('tensor', '')}".rstrip())
    rate = "" if s.hit_rate is None else f", hit rate {100 * s.hit_rate:.0f}%"
    print(
        f"{s.computed + s.recomputed} computed, {s.hits} from cache{rate}"
        + ("" if s.finished else " (no summary: killed?)")
    )
    return 0


def run(args: argparse.Namespace) -> int:
    enter_directory(args)
    with open_store(args, read_only=True) as store:
        return _show(args, store) if args.run_spec is not None else _list(args, store)
