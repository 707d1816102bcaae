"""``mergebuild cache stats|ls|gc|verify|clear``: see and tend what the cache holds.

``stats`` and ``verify`` and ``clear`` need only the cache; ``ls`` names entries after the
targets of the recipe when there is one; ``gc`` needs the recipe to know what is in use
(unless ``--keep-unused``, which only evicts least-recently-used entries down to a size).
``verify`` exits 1 when it found (and dropped) corrupt entries, like ``fsck``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from mergefile.cli.main import add_recipe_options, enter_directory, load_recipe, open_store, parse_size
from mergefile.errors import UserError

ACTIONS = {
    "stats": "size, entries, hit rate and bytes saved of the last builds",
    "ls": "list entries with the target and tensor each belongs to",
    "gc": "drop entries no current target uses; --max-size evicts least-recently-used ones",
    "verify": "re-hash every entry; drop corrupt ones (the next build recomputes them)",
    "clear": "drop every entry (--all: also the stat-cache and build logs)",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, help in ACTIONS.items():
        q = sub.add_parser(name, help=help, description=help)
        add_recipe_options(q)
        if name in ("stats", "ls", "verify", "gc"):
            q.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "stats":
            q.add_argument("--last", type=int, default=10, metavar="N", help="builds to sum (default 10, 0: all)")
        if name == "ls":
            q.add_argument("--unused", action="store_true", help="only entries no current target uses")
        if name == "gc":
            q.add_argument(
                "--max-size",
                type=parse_size,
                default=None,
                metavar="SIZE",
                help="then evict LRU entries down to SIZE (e.g. 20G)",
            )
            q.add_argument(
                "--keep-unused",
                action="store_true",
                help="do not drop unused entries (no recipe needed; for a shared cache)",
            )
            q.add_argument("--keep-logs", type=int, default=100, metavar="N", help="build logs to keep (default 100)")
            q.add_argument("-n", "--dry-run", action="store_true", help="say what would be dropped, drop nothing")
        if name == "clear":
            q.add_argument("--all", action="store_true", help="also the stat-cache, conversions and build logs")


def run(args: argparse.Namespace) -> int:
    enter_directory(args)
    return {"stats": _stats, "ls": _ls, "gc": _gc, "verify": _verify, "clear": _clear}[args.action](args)


def _human(n: float) -> str:
    from mergefile.cli.render import human_bytes

    return human_bytes(n)


def _recipe_if_any(args):
    """The recipe when one is there (to name entries), else None."""
    if args.config:
        raise UserError(
            "cache commands read a Mergefile, not --config",
            hint='include "merge.yml" as out/x in a Mergefile, or use -f FILE',
        )
    if args.file or Path("Mergefile").is_file():
        return load_recipe(args)
    return None


def _owners(args, store) -> dict:
    """key -> KeyUse from the current plans, then from the manifests of output folders."""
    from mergefile.run.usage import current_usage, manifest_keys

    mf = _recipe_if_any(args)
    if mf is None:
        return {}
    used, planned = current_usage(mf, store, args.allow_pickle)
    on_disk = manifest_keys((plan.name, str(plan.out_dir)) for plan, _, _, _ in planned)
    return {**on_disk, **used}


def _stats(args) -> int:
    from mergefile.run.history import recent, totals

    with open_store(args, read_only=True) as store:
        blobs = store.blobs
        runs = recent(store.log, args.last)
        t = totals(runs)
        data = {
            "cache_dir": str(store.root),
            "entries": len(blobs),
            "volume_bytes": blobs.volume(),
            "size_limit_bytes": blobs.size_limit,
            "builds": t.to_json(),
            "logged_runs": len(store.log.runs()),
        }
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    rate = "n/a" if t.hit_rate is None else f"{100 * t.hit_rate:.0f}%"
    print(f"cache:      {data['cache_dir']}")
    print(
        f"size:       {_human(data['volume_bytes'])} of {_human(data['size_limit_bytes'])} limit, {data['entries']} entries"
    )
    print(
        f"last {t.runs} build(s): {t.hits} tensors from cache, {t.computed + t.recomputed} computed (hit rate {rate}), "
        f"{t.up_to_date_targets} target(s) already up to date"
    )
    print(f"bytes saved: {_human(t.bytes_saved)} of input not read; read {_human(t.bytes_read)}")
    return 0


def _ls(args) -> int:
    with open_store(args, read_only=True) as store:
        owners = _owners(args, store)
        rows = []
        for key in store.blobs.keys():
            use = owners.get(key)
            if args.unused and use is not None and use.kind != "tensor (on disk)":
                continue
            info = store.blobs.info(key)
            rows.append(
                {
                    "key": key,
                    "bytes": info[2] if info else None,
                    "dtype": info[0] if info else None,
                    "shape": list(info[1]) if info else None,
                    "kind": use.kind if use else "unused",
                    "target": use.target if use else None,
                    "tensor": use.tensor if use else None,
                }
            )
    rows.sort(key=lambda r: (r["target"] is None, r["target"] or "", r["tensor"] or "", r["kind"], r["key"]))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        size = _human(r["bytes"]) if r["bytes"] is not None else "unreadable"
        where = f"{r['target']}  {r['tensor']}" if r["target"] else "-"
        print(f"{r['key']}  {size:>9}  {r['kind']:<18} {where}")
    print(f"{len(rows)} entries")
    return 0


def _gc(args) -> int:
    from mergefile.run.usage import current_usage

    with open_store(args) as store:
        blobs = store.blobs
        report = {
            "dropped": 0,
            "dropped_bytes": 0,
            "evicted": 0,
            "evicted_bytes": 0,
            "orphan_bytes": 0,
            "logs_pruned": 0,
        }
        if not args.keep_unused:
            mf = _recipe_if_any(args)
            if mf is None:
                raise UserError(
                    f"cache gc needs the recipe to know which entries are in use, and there is no Mergefile in {Path.cwd()}",
                    hint="use -f FILE / -C DIR, or --keep-unused --max-size SIZE to only evict least-recently-used entries",
                )
            try:
                used, _ = current_usage(mf, store, args.allow_pickle)
            except UserError as e:
                raise UserError(
                    f"cache gc cannot tell which entries are in use, because the recipe does not plan: {e.render()}",
                    hint="fix the recipe, or use --keep-unused --max-size SIZE",
                ) from None
            for key in list(blobs.keys()):
                if key in used:
                    continue
                info = blobs.info(key)
                if args.dry_run or blobs.delete(key):
                    report["dropped"] += 1
                    report["dropped_bytes"] += info[2] if info else 0
        if args.max_size is not None and not args.dry_run:
            before = len(blobs)
            report["evicted_bytes"] = blobs.evict_to(args.max_size)
            report["evicted"] = before - len(blobs)
        if not args.dry_run:
            report["orphan_bytes"] = blobs.sweep_orphans()
            report["logs_pruned"] = len(store.log.prune(args.keep_logs))
        report.update(entries=len(blobs), volume_bytes=blobs.volume(), dry_run=args.dry_run)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    verb = "would drop" if args.dry_run else "dropped"
    lines = (
        [f"{verb} {report['dropped']} unused entries ({_human(report['dropped_bytes'])})"]
        if not args.keep_unused
        else []
    )
    if args.max_size is not None:
        lines.append(
            f"evicted {report['evicted']} least-recently-used entries ({_human(report['evicted_bytes'])})"
            if not args.dry_run
            else f"would then evict least-recently-used entries down to {_human(args.max_size)}"
        )
    if report["orphan_bytes"]:
        lines.append(f"removed {_human(report['orphan_bytes'])} of files left by killed builds")
    lines.append(f"cache now {_human(report['volume_bytes'])} in {report['entries']} entries")
    print("\n".join(lines))
    return 0


def _verify(args) -> int:
    with open_store(args) as store:
        total = len(store.blobs)
        bad = store.blobs.verify_all()
        owners = _owners(args, store) if bad else {}
    rows = [
        {"key": k, "target": getattr(owners.get(k), "target", None), "tensor": getattr(owners.get(k), "tensor", None)}
        for k in bad
    ]
    if args.json:
        print(json.dumps({"checked": total, "corrupt": rows}, indent=2))
    else:
        for r in rows:
            where = f" ({r['target']}: {r['tensor']})" if r["target"] else ""
            print(f"corrupt: {r['key']}{where} — dropped; the next build recomputes it")
        print(f"checked {total} entries: " + (f"{len(bad)} corrupt, dropped" if bad else "all intact"))
    return 1 if bad else 0


def _clear(args) -> int:
    with open_store(args) as store:
        n, volume = len(store.blobs), store.blobs.volume()
        store.blobs.clear()
        gone = [f"{n} entries ({_human(volume)})"]
        if args.all:
            store.meta.clear(retry=True)
            store.log.prune(0)
            gone.append("the stat-cache and build logs")
            converted = store.root / "converted"
            if converted.is_dir():
                shutil.rmtree(converted, ignore_errors=True)
                gone.append("converted pickles")
    print("removed " + ", ".join(gone))
    return 0
