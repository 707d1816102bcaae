"""The store facade the executor uses: blobs, bookkeeping, stat-cache and build log under one root.

Layout of a cache root (see ``cache/README.md``)::

    blobs/  tensors by key (size-limited, LRU)      meta/  stat-cache, bookkeeping (never evicted)
    logs/   one JSONL build log per run             stamps/ up-to-date stamps (``stamp.py``)
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import diskcache

from mergefile.store.blobs import BlobStore
from mergefile.store.location import CACHE_DIR_ENV, default_cache_dir
from mergefile.store.log import BuildLog
from mergefile.store.statcache import StatCache

__all__ = ["CACHE_DIR_ENV", "DEFAULT_SIZE_LIMIT", "Store", "default_cache_dir"]

DEFAULT_SIZE_LIMIT = 100 * 2**30


class Store:
    """Everything a build keeps between runs.

    Args:
        root: the cache folder (created if missing).
        size_limit: bytes the blob store may use before LRU eviction.

    Example:
        >>> with Store(default_cache_dir()) as store:
        ...     store.blobs.put(key, tensor)
    """

    def __init__(self, root: str | Path, size_limit: int = DEFAULT_SIZE_LIMIT):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.blobs = BlobStore(self.root / "blobs", size_limit)
        # Bookkeeping must never be evicted by blob pressure: separate cache, no eviction.
        self.meta = diskcache.Cache(str(self.root / "meta"), eviction_policy="none")
        self.stat = StatCache(self.meta)
        self.log = BuildLog(self.root / "logs")

    _scratch = False

    @classmethod
    def scratch(cls, size_limit: int = DEFAULT_SIZE_LIMIT) -> Store:
        """A store in a private temporary folder, deleted on close: what a read-only command
        (``graph``, ``status``, ``-n``) uses when the cache does not exist, so it creates none."""
        store = cls(tempfile.mkdtemp(prefix="mergebuild-scratch-"), size_limit)
        store._scratch = True
        return store

    def close(self) -> None:
        """Close the SQLite connections of this thread (safe to call twice)."""
        self.blobs.close()
        self.meta.close()
        if self._scratch:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
