"""Up-to-date stamps: answer a no-op rebuild from ``stat`` data alone, as make and ninja do.

Planning a build parses the recipe, opens every input's headers and keys every tensor: cheap,
but it needs the parser, the planner and networkx imported, which is most of a no-op's time.
After a run that leaves its targets up to date, the build records a stamp: the request (recipe
path, targets, flags) and the ``stat`` identity of every file and folder the plan depended on
(recipe and includes, lockfile, every input model folder, every output folder, mergebuild's
own code) plus the environment variables that steer model resolution. The next identical
request whose files all still match is up to date without planning anything. Any difference,
any missing stamp or unreadable file falls back to the full check, which writes a new stamp.

A file modified within one timestamp tick of its ``stat`` keeps the same identity (git calls
this *racy clean*), so a stamp only vouches for files whose mtime is clearly older than the
moment the stamp was taken: :func:`record` waits out that window when it is short (fine-grained
file systems: ``RACY_FINE_NS``), and :func:`check` refuses a stamp if any file is within it.

This module is the one owner of that up-to-date proof. What it depends on besides the files is
declared in ``mergefile/depends.py`` (mergebuild's code, ``RESOLUTION_ENV``), shared with the
build server's fingerprint. A repeated command line finds its stamp by a second key, its
**alias** (:func:`record_alias`, :func:`check_alias`): the exact command (working directory,
arguments, the same environment) -> which stamp it meant, kept per user because the console
script looks it up before it knows the cache. An alias holds no answer of its own: the stamp
it points at is checked exactly as :func:`check` checks it, under the same version.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence

import xxhash

from mergefile._tree import TooBig as _TooBig
from mergefile._tree import identity as _identity
from mergefile._tree import walk as _walk
from mergefile.depends import code_fingerprint, resolution_environment

__all__ = [
    "alias_dir",
    "check",
    "check_alias",
    "code_fingerprint",
    "environment",
    "forget",
    "record",
    "record_alias",
    "request_id",
]

STAMP_VERSION = 1  # of stamps and aliases alike
STAMP_DIR = "stamps"
ALIAS_KEEP = 500  # aliases kept per user (the newest)
# Timestamps with a sub-second part come from a clock with jiffy granularity (<= 10 ms, and
# the coarse clock can trail the fine one by as much again); whole-second timestamps may come
# from a file system that keeps 1 s or 2 s.
RACY_FINE_NS = 50_000_000
RACY_COARSE_NS = 2_000_000_000


def request_id(request: Mapping[str, object]) -> str:
    """The stamp file name for one request (recipe, targets, flags that change the answer)."""
    text = json.dumps(request, sort_keys=True, separators=(",", ":"))
    return xxhash.xxh3_128_hexdigest(text.encode())


def _racy_window(st_mtime_ns: int) -> int:
    return RACY_FINE_NS if st_mtime_ns % 1_000_000_000 else RACY_COARSE_NS


def environment() -> dict[str, str]:
    """The environment a stamp and an alias depend on (model resolution, the cache's place):
    ``depends.RESOLUTION_ENV``."""
    return resolution_environment()


def _path(cache_dir: str | os.PathLike, rid: str) -> str:
    return os.path.join(cache_dir, STAMP_DIR, f"{rid}.json")


def record(
    cache_dir: str | os.PathLike,
    request: Mapping[str, object],
    targets: Iterable[str],
    depends: Iterable[str],
    messages: Iterable[str] = (),
    read_since_ns: int | None = None,
    written: Iterable[str] = (),
) -> bool:
    """Write the stamp for ``request``: its targets are up to date given ``depends`` as they are.

    Args:
        depends: files and folders (walked) the answer depended on; a missing one is recorded
            as missing.
        messages: what the full check printed (warnings), for :func:`check`'s caller to repeat.
        read_since_ns: when the run began reading ``depends``. A file changed since (a recipe
            saved while a long build ran) may differ from what the run read: no stamp, or the
            next run would call the new recipe up to date.
        written: folders among ``depends`` that the run itself wrote (its outputs).

    Returns:
        Whether a stamp was written (not for a huge folder tree, nor after a change mid-run).
    """
    files: dict[str, list[int] | None] = {}
    try:
        for p in dict.fromkeys(os.path.abspath(d) for d in depends):
            _walk(p, files)
    except _TooBig:
        return False
    if read_since_ns is not None and _changed_since(files, read_since_ns, written):
        return False
    newest = max((f[1] for f in files.values() if f), default=0)
    window = _racy_window(newest)
    wait = newest + window - time.time_ns()
    if 0 < wait <= RACY_FINE_NS:  # just written (our own outputs): wait it out, then re-stat
        time.sleep(wait / 1e9)
        files = {}
        for p in dict.fromkeys(os.path.abspath(d) for d in depends):
            _walk(p, files)
    stamp = {
        "version": STAMP_VERSION,
        "code": code_fingerprint(),
        "env": environment(),
        "request": dict(request),
        "targets": list(targets),
        "messages": list(messages),
        "files": files,
        "written_ns": time.time_ns(),
    }
    path = _path(cache_dir, request_id(request))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(stamp, separators=(",", ":")))
    os.replace(tmp, path)
    return True


def _changed_since(files: dict[str, list[int] | None], since_ns: int, written: Iterable[str]) -> bool:
    """Whether a file the run read (not one it wrote) changed at or after ``since_ns``. File times
    come from a clock that trails ``time_ns`` by up to a tick, so "after" starts one racy window
    early; ctime counts too (``cp -p`` sets an old mtime, never an old ctime)."""
    own = [os.path.abspath(w) for w in written]
    for path, ident in files.items():
        if ident is None or any(path == o or path.startswith(o + os.sep) for o in own):
            continue
        changed = max(ident[1], ident[2])  # mtime, ctime
        if changed >= since_ns - _racy_window(changed):
            return True
    return False


def check(cache_dir: str | os.PathLike, request: Mapping[str, object]) -> tuple[list[str], list[str]] | None:
    """``(targets, messages)`` a stamp vouches are up to date for ``request``, or None (do the
    full check)."""
    try:
        stamp = _load(_path(cache_dir, request_id(request)))
    except (OSError, ValueError):
        return None
    if not _vouches(stamp, json.loads(json.dumps(dict(request)))):
        return None
    return list(stamp.get("targets", [])), list(stamp.get("messages", []))


def _load(path: str) -> object:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _vouches(stamp: object, request: object) -> bool:
    """Whether ``stamp`` (as read) is for ``request`` and everything it depends on still holds."""
    if (
        not isinstance(stamp, dict)
        or stamp.get("version") != STAMP_VERSION
        or stamp.get("request") != request
        or stamp.get("env") != environment()
    ):
        return False
    written = int(stamp.get("written_ns", 0))
    for p, ident in stamp.get("files", {}).items():
        try:
            now = _identity(os.stat(p))
        except OSError:
            now = None
        if now != ident:
            return False
        if now is not None and now[1] >= written - _racy_window(now[1]):
            return False  # modified too close to the stamp to trust its identity
    return stamp.get("code") == code_fingerprint()


def forget(cache_dir: str | os.PathLike, request: Mapping[str, object]) -> None:
    """Drop the stamp of ``request`` (a build that failed or found work to do)."""
    try:
        os.unlink(_path(cache_dir, request_id(request)))
    except OSError:
        pass


# Aliases: the exact command line -> the stamp it meant.


def alias_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mergebuild", "noop")


def _alias_path(cwd: str, argv: Sequence[str]) -> str:
    text = json.dumps([STAMP_VERSION, "alias", cwd, list(argv), environment()])
    return os.path.join(alias_dir(), xxhash.xxh3_128_hexdigest(text.encode()) + ".json")


def record_alias(
    cwd: str, argv: Sequence[str], request: Mapping[str, object], resolve: Sequence[tuple[str, str]], question: bool
) -> None:
    """Remember which stamp this exact command meant (after that stamp vouched for it).

    Args:
        cwd: the working directory the command started in (before ``-C``).
        request: the stamp's request (its ``cache`` says where the stamp lives).
        resolve: ``(path as the command named it, relative to cwd; its real path in the request)``
            pairs, resolved again on every use (a moved symlink is a miss).
        question: the command was ``-q`` (its answer prints nothing).
    """
    path = _alias_path(cwd, argv)
    data = {
        "version": STAMP_VERSION,
        "cache": request["cache"],
        "stamp": request_id(request),
        "resolve": [list(p) for p in resolve],
        "question": bool(question),
    }
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
    if len(names) <= ALIAS_KEEP:
        return

    def mtime(n: str) -> int:
        try:
            return os.stat(os.path.join(d, n)).st_mtime_ns
        except OSError:
            return 0

    for n in sorted(names, key=mtime)[: len(names) - ALIAS_KEEP]:
        try:
            os.unlink(os.path.join(d, n))
        except OSError:
            pass


def check_alias(cwd: str, argv: Sequence[str]) -> tuple[dict, bool, list[str], list[str]] | None:
    """``(request, question, targets, messages)`` for the command ``argv`` started in ``cwd``
    when its alias still means the same request and that request's stamp vouches for it (as
    :func:`check`); None: run the command."""
    try:
        alias = _load(_alias_path(cwd, argv))
        if alias.get("version") != STAMP_VERSION:
            return None
        for named, real in alias["resolve"]:
            if os.path.realpath(os.path.join(cwd, named)) != real:
                return None
        rid, question = alias["stamp"], bool(alias["question"])
        stamp = _load(_path(alias["cache"], rid))
        request = stamp["request"]
        if request.get("cache") != alias["cache"] or request_id(request) != rid:
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not _vouches(stamp, request):
        return None
    return request, question, list(stamp.get("targets", [])), list(stamp.get("messages", []))
