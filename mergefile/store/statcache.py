"""Per-file tensor digests remembered by stat data, as git's index does.

Hashing a 7B model reads ~15 GB; a no-op rebuild must read nothing. An entry keyed by the
file's real path records its ``lstat`` identity (size, mtime_ns, ctime_ns, inode, device) and
the per-tensor digests. A lookup whose identity matches is a hit, with one exception, git's
*racy-clean* rule: a file whose mtime is not clearly older than the moment the entry was
written may have been modified again within the same timestamp tick, so it is re-hashed.
After one re-hash the entry is clean (its write time has moved on), so this costs at most one
extra hash per freshly written file.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import diskcache

    from mergefile.io.header import TensorInfo

Hasher = Callable[[str, Sequence["TensorInfo"]], dict[str, str]]

# File timestamps on Linux come from a coarse clock (a jiffy, up to ~10 ms) and some file
# systems keep whole or even 2 seconds; 2 s covers them all at the cost of re-hashing a file
# written less than 2 s before its entry once.
DEFAULT_RACY_SLACK_NS = 2_000_000_000
_PREFIX = "statcache:v1:"


def _identity(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _default_hasher(path: str, infos: Sequence[TensorInfo]) -> dict[str, str]:
    from mergefile.io.reader import digest_tensors  # lazy: io may be absent in early builds

    return digest_tensors(path, infos)


class StatCache:
    """Never re-hash an unchanged file.

    Args:
        cache: the bookkeeping diskcache (never evicted by blob pressure).
        hasher: ``(path, infos) -> {name: digest}``; defaults to
            ``mergefile.io.reader.digest_tensors``.
        racy_slack_ns: entries whose file mtime is within this of the entry's write time are
            treated as racy and re-hashed.
    """

    def __init__(self, cache: diskcache.Cache, *, hasher: Hasher | None = None,
                 racy_slack_ns: int = DEFAULT_RACY_SLACK_NS):
        self._cache = cache
        self._hasher = hasher or _default_hasher
        self._slack = racy_slack_ns
        self._lock = threading.Lock()
        self.files_hashed = 0
        self.bytes_hashed = 0
        self.hits = 0
        # called (no arguments) before a file is hashed: a build uses it to start importing
        # torch while the inputs stream through the hash
        self.before_hash: Callable[[], None] | None = None

    def digests(self, path: str, infos: Sequence[TensorInfo]) -> dict[str, str]:
        """Per-tensor digests of one file, hashing only what the cache cannot vouch for.

        Returns:
            ``{info.name: digest}`` for every info given.
        """
        real = os.path.realpath(path)
        key = _PREFIX + real
        before = os.stat(real)
        ident = _identity(before)
        entry: dict[str, Any] | None = self._cache.get(key, retry=True)
        cached: dict[str, list] = {}
        if entry and entry.get("stat") == ident and not self._racy(before, entry):
            cached = entry["tensors"]
        hit = {i.name: cached[i.name][2] for i in infos if self._same_range(cached.get(i.name), i)}
        todo = [i for i in infos if i.name not in hit]
        if not todo:
            with self._lock:
                self.hits += 1
            return hit
        if self.before_hash is not None:
            self.before_hash()
        fresh = self._hasher(real, todo)
        with self._lock:
            self.files_hashed += 1
            self.bytes_hashed += sum(int(i.nbytes) for i in todo)
        after = os.stat(real)
        if _identity(after) == ident:  # the file held still while we read it: safe to record
            tensors = dict(cached)
            tensors.update({i.name: [int(i.begin), int(i.end), fresh[i.name]] for i in todo})
            record = {"stat": ident, "written_ns": time.time_ns(), "tensors": tensors}
            self._cache.set(key, record, retry=True)
        hit.update({i.name: fresh[i.name] for i in todo})
        return hit

    def forget(self, path: str) -> bool:
        """Drop the entry of one file (e.g. after the build rewrote it)."""
        return bool(self._cache.delete(_PREFIX + os.path.realpath(path), retry=True))

    def _racy(self, st: os.stat_result, entry: dict[str, Any]) -> bool:
        # git racy-clean: mtime >= entry write time (minus clock granularity) -> re-hash
        return st.st_mtime_ns >= int(entry.get("written_ns", 0)) - self._slack

    @staticmethod
    def _same_range(cached: list | None, info: TensorInfo) -> bool:
        return cached is not None and cached[0] == int(info.begin) and cached[1] == int(info.end)
