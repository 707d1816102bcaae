"""Answering a repeated, up-to-date command cheaply: from its stamp, and before parsing at all.

Two levels, both ending in :func:`answer_stamped` (``store/stamp.py`` checks the files):

* the CLI parses the command line, builds the stamp request and asks the stamp
  (``main.stamped_noop``): no planner, no torch;
* the console script, before it imports the CLI or contacts a build server, looks up an
  **alias**: the exact command (working directory, arguments, the environment the stamp keys
  on) -> the request it meant last time. Users and CI scripts repeat the same command byte for
  byte; argparse gives an identical command the same meaning, and everything else the request
  depends on is checked again: its paths are re-resolved (a moved symlink is a miss), and the
  stamp is checked exactly as above. Any doubt is a miss and the command runs as usual.

Aliases live per user (``$XDG_CACHE_HOME/mergebuild/noop``, else ``~/.cache/...``), one small
file per command, pruned to the newest ``KEEP``; deleting them is always safe. The console
script imports this module first, so it keeps to the standard library and xxhash.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

import xxhash

from mergefile.store import stamp

ALIAS_VERSION = 1
KEEP = 500


def up_to_date_line(name: str) -> str:
    return f"{name} is up to date"


def answer_stamped(request: dict, argv: Sequence[str], question: bool, alias: bool = False) -> int | None:
    """Exit status 0 and the usual lines if the stamp vouches for ``request``; None otherwise."""
    found = stamp.check(request["cache"], request)
    if found is None:
        return None
    from mergefile.store.log import BuildLog

    targets, messages = found
    for m in messages:
        print(m, file=sys.stderr)
    run = BuildLog(os.path.join(request["cache"], "logs")).start_run(list(argv))
    for name in targets:
        run.record(target=name, status="up-to-date", stamp=True)
    run.close(targets=targets, computed=0, hits=0, stage_hits=0, stage_misses=0, bytes_read=0,
              bytes_written=0, stamp=True, **({"alias": True} if alias else {}))
    if not question:
        for name in targets:
            print(up_to_date_line(name))
    return 0


def alias_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mergebuild", "noop")


def _alias_path(cwd: str, argv: Sequence[str]) -> str:
    text = json.dumps([ALIAS_VERSION, cwd, list(argv), stamp.environment()])
    return os.path.join(alias_dir(), xxhash.xxh3_128_hexdigest(text.encode()) + ".json")


def record_alias(cwd: str, argv: Sequence[str], request: dict, resolve: Sequence[tuple[str, str]],
                 question: bool) -> None:
    """Remember which request this exact command meant (after its stamp vouched for it).

    Args:
        cwd: the working directory the command started in (before ``-C``).
        resolve: ``(path as the command named it, relative to cwd; its real path in the request)``
            pairs, resolved again on every use.
        question: the command was ``-q`` (its answer prints nothing).
    """
    path = _alias_path(cwd, argv)
    data = {"version": ALIAS_VERSION, "request": request, "resolve": [list(p) for p in resolve],
            "question": bool(question)}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, separators=(",", ":"))
        os.replace(tmp, path)
        _prune(os.path.dirname(path))
    except OSError:
        pass  # an alias only saves time: never a reason to fail


def _prune(d: str) -> None:
    names = [n for n in os.listdir(d) if n.endswith(".json")]
    if len(names) <= KEEP:
        return
    def mtime(n: str) -> int:
        try:
            return os.stat(os.path.join(d, n)).st_mtime_ns
        except OSError:
            return 0
    for n in sorted(names, key=mtime)[: len(names) - KEEP]:
        try:
            os.unlink(os.path.join(d, n))
        except OSError:
            pass


def answer_alias(argv: Sequence[str]) -> int | None:
    """The exit status of a repeated command its alias and stamp vouch for; None: run it."""
    try:
        cwd = os.getcwd()
        with open(_alias_path(cwd, argv), encoding="utf-8") as fh:
            data = json.load(fh)
        if data.get("version") != ALIAS_VERSION:
            return None
        for named, real in data["resolve"]:
            if os.path.realpath(os.path.join(cwd, named)) != real:
                return None
        request, question = data["request"], bool(data["question"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return answer_stamped(request, argv, question, alias=True)
