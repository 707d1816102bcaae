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


def identity(st: os.stat_result) -> list[int]:
    """What must not change for an entry to stay valid: size, mtime, ctime, inode, device."""
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

    def __init__(
        self, cache: diskcache.Cache, *, hasher: Hasher | None = None, racy_slack_ns: int = DEFAULT_RACY_SLACK_NS
    ):
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
        before = os.stat(real)
        hit = self._known(real, infos, before)
        todo = [i for i in infos if i.name not in hit]
        if not todo:
            with self._lock:
                self.hits += 1
            return hit
        if self.before_hash is not None:
            self.before_hash()
        fresh = self.hash_tensors(real, todo)
        self.record(real, identity(before), {i.name: (i.begin, i.end, fresh[i.name]) for i in todo})
        hit.update({i.name: fresh[i.name] for i in todo})
        return hit

    def known(self, path: str, infos: Sequence[TensorInfo], st: os.stat_result | None = None) -> dict[str, str]:
        """The digests the cache can vouch for without reading the file (a subset of ``infos``)."""
        real = os.path.realpath(path)
        return self._known(real, infos, st if st is not None else os.stat(real))

    def _known(self, real: str, infos: Sequence[TensorInfo], st: os.stat_result) -> dict[str, str]:
        entry: dict[str, Any] | None = self._cache.get(_PREFIX + real, retry=True)
        if not entry or entry.get("stat") != identity(st) or self._racy(st, entry):
            return {}
        cached = entry["tensors"]
        return {i.name: cached[i.name][2] for i in infos if self._same_range(cached.get(i.name), i)}

    def hash_tensors(self, path: str, infos: Sequence[TensorInfo]) -> dict[str, str]:
        """Hash ``infos`` of one file now (counted in ``files_hashed``/``bytes_hashed``)."""
        fresh = self._hasher(os.path.realpath(path), infos)
        with self._lock:
            self.files_hashed += 1
            self.bytes_hashed += sum(int(i.nbytes) for i in infos)
        return fresh

    def record(self, path: str, ident: list[int], tensors: dict[str, tuple[int, int, str]]) -> bool:
        """Remember digests hashed from a file whose identity was ``ident`` when reading began.

        Nothing is recorded when the file has changed since (its bytes may not be what was
        hashed). Entries of other tensors of the same identity are kept: the read-modify-write
        is one transaction, so builds hashing different tensors of one file (threads here,
        other processes) never drop each other's digests.
        """
        real = os.path.realpath(path)
        now = os.stat(real)
        if identity(now) != ident:
            return False
        key = _PREFIX + real
        with self._lock, self._cache.transact(retry=True):
            entry: dict[str, Any] | None = self._cache.get(key, retry=True)
            # a racy entry's other digests may predate a same-tick write: never carry them over
            valid = entry and entry.get("stat") == ident and not self._racy(now, entry)
            old = entry["tensors"] if valid else {}
            merged = dict(old)
            merged.update({n: [int(b), int(e), d] for n, (b, e, d) in tensors.items()})
            self._cache.set(key, {"stat": ident, "written_ns": time.time_ns(), "tensors": merged}, retry=True)
        return True

    def forget(self, path: str) -> bool:
        """Drop the entry of one file (e.g. after the build rewrote it)."""
        return bool(self._cache.delete(_PREFIX + os.path.realpath(path), retry=True))

    def _racy(self, st: os.stat_result, entry: dict[str, Any]) -> bool:
        # git racy-clean: mtime >= entry write time (minus clock granularity) -> re-hash
        return st.st_mtime_ns >= int(entry.get("written_ns", 0)) - self._slack

    @staticmethod
    def _same_range(cached: list | None, info: TensorInfo) -> bool:
        return cached is not None and cached[0] == int(info.begin) and cached[1] == int(info.end)
