"""Tensors by key, as files diskcache manages, read back zero-copy.

Each value is a one-tensor safetensors file (so ``safetensors.safe_open`` can read a blob for
debugging)::

    u64 little-endian N | JSON header, N bytes, space-padded to a multiple of 8 | raw data

with header ``{"t": {"dtype", "shape", "data_offsets"}, "__metadata__": {"xxh3", "key"}}``.
``xxh3`` is the xxh3_128 of the data, ``key`` the store key (a blob renamed under another key
is caught). The data starts 8-byte aligned, so an mmap view is aligned for every dtype.

Writes stream through ``Cache.add(key, reader, read=True)``: diskcache copies the reader into
a fresh file of its own and inserts the SQLite row only after the file is complete, so a killed
writer leaves at most an orphan file, never a visible half-blob (``sweep_orphans`` reclaims
them). Reads mmap the file copy-on-write: a hit costs page faults, not a deserialization, and
writing into the returned tensor never touches the cache. Deleting or evicting a blob while a
tensor views it is safe on POSIX (the mapping keeps the inode alive).
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import diskcache
import xxhash

from mergefile._lazy import torch
from mergefile.io.header import DTYPE_CODES as _CODES
from mergefile.io.header import DTYPE_SIZES as _SIZES
from mergefile.io.header import TORCH_DTYPES as _DTYPES
from mergefile.io.writer import RawTensor

_MAX_HEADER = 1 << 20  # one tensor's header is ~200 bytes; anything big is garbage
_MMAP_MIN = 1 << 16  # below this, one small read beats an mmap (and a map-count slot)
_CHUNK = 1 << 22


class _Corrupt(Exception):
    """A blob whose bytes do not match its header or its digest."""


class _BlobReader:
    """File-like ``read(n)`` over header bytes then the tensor's memory: no big joined copy."""

    def __init__(self, header: bytes, data: memoryview):
        self._parts = [memoryview(header), data]
        self._pos = 0

    def read(self, n: int = -1) -> memoryview | bytes:
        while self._parts:
            part = self._parts[0]
            if self._pos < len(part):
                end = len(part) if n is None or n < 0 else self._pos + n
                chunk = part[self._pos : end]
                self._pos += len(chunk)
                return chunk
            self._parts.pop(0)
            self._pos = 0
        return b""


def _encode_header(key: str, code: str, shape: list[int], nbytes: int, digest: str) -> bytes:
    meta = {
        "t": {"dtype": code, "shape": shape, "data_offsets": [0, nbytes]},
        "__metadata__": {"xxh3": digest, "key": key},
    }
    body = json.dumps(meta, separators=(",", ":")).encode()
    body += b" " * (-len(body) % 8)
    return struct.pack("<Q", len(body)) + body


def _parse_header(head: bytes, key: str) -> tuple[str, list[int], int, int, str]:
    """(dtype code, shape, data start, nbytes, xxh3) from the start of a blob."""
    try:
        (n,) = struct.unpack_from("<Q", head, 0)
        if n > _MAX_HEADER or len(head) < 8 + n:
            raise _Corrupt("header length")
        meta = json.loads(head[8 : 8 + n])
        t, md = meta["t"], meta["__metadata__"]
        code, shape, (begin, end) = t["dtype"], [int(s) for s in t["shape"]], t["data_offsets"]
        numel = 1
        for s in shape:
            numel *= s
        ok = md["key"] == key and begin == 0 and min(shape, default=0) >= 0 and end == numel * _SIZES[code]
        digest = str(md["xxh3"])
    except (struct.error, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _Corrupt(f"unreadable header: {exc}") from exc
    if not ok:
        raise _Corrupt("header does not describe this key")
    return code, shape, 8 + n, end, digest


def _read_header(handle: BinaryIO, key: str) -> tuple[str, list[int], int, int, str]:
    """Read and parse the header at the start of an open blob (one read for small headers)."""
    head = handle.read(4096)
    if len(head) < 8:
        raise _Corrupt("blob shorter than its length prefix")
    (n,) = struct.unpack_from("<Q", head)
    if 8 + n > len(head) and n <= _MAX_HEADER:
        head += handle.read(8 + n - len(head))
    return _parse_header(head, key)


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes as a flat memoryview, without a copy when already contiguous CPU."""
    t = tensor.detach().to("cpu").resolve_conj().resolve_neg().contiguous()
    return memoryview(t.reshape(-1).view(torch.uint8).numpy()).cast("B")


class BlobStore:
    """Content-addressed tensor store with a size limit and LRU eviction.

    Thread-safe and process-safe (SQLite + diskcache file handling); counters are per object.

    Args:
        directory: the diskcache folder.
        size_limit: bytes; after each put the store is evicted (LRU) back under it.
    """

    def __init__(self, directory: str | Path, size_limit: int):
        self.directory = Path(directory)
        self.size_limit = int(size_limit)
        self._cache = diskcache.Cache(str(directory), size_limit=self.size_limit, eviction_policy="least-recently-used")
        self._lock = threading.Lock()
        self.hits = self.misses = self.bytes_read = self.bytes_written = 0

    # -- writing ---------------------------------------------------------------------------
    def put(self, key: str, tensor: torch.Tensor) -> int:
        """Store tensor under key; returns bytes written (0 when the key was already there)."""
        if key in self._cache:
            return 0
        code = _CODES.get(tensor.dtype)
        if code is None:
            raise TypeError(f"dtype {tensor.dtype} cannot be stored as a safetensors blob")
        return self.put_raw(key, RawTensor(code, tuple(tensor.shape), _tensor_bytes(tensor)))

    def put_raw(self, key: str, raw: RawTensor) -> int:
        """:meth:`put` of a tensor given as its bytes (no torch); returns bytes written."""
        if key in self._cache:
            return 0
        data = raw.data.cast("B") if raw.data.format != "B" or raw.data.ndim != 1 else raw.data
        header = _encode_header(key, raw.code, list(raw.shape), len(data), xxhash.xxh3_128_hexdigest(data))
        if not self._cache.add(key, _BlobReader(header, data), read=True, retry=True):
            return 0  # another thread/process won the race with identical content
        size = len(header) + len(data)
        self._count(bytes_written=size)
        if self._cache.volume() > self.size_limit:
            self.evict_to(self.size_limit)
        return size

    # -- reading ---------------------------------------------------------------------------
    def get(self, key: str, *, verify: bool = False) -> torch.Tensor | None:
        """The tensor for key as a zero-copy view of its blob, or None on a miss.

        Args:
            verify: re-hash the data (xxh3); a mismatch drops the entry and reads as a miss,
                so the caller rebuilds it.
        """
        raw = self.get_raw(key, verify=verify)
        if raw is None:
            return None
        dtype = _DTYPES[raw.code]
        if not raw.data.nbytes:
            return torch.empty(raw.shape, dtype=dtype)
        return torch.frombuffer(raw.data, dtype=dtype).reshape(raw.shape)

    def get_raw(self, key: str, *, verify: bool = False) -> RawTensor | None:
        """The blob's dtype code, shape and bytes (a view; a copy-on-write mapping for big blobs), or
        None on a miss; ``verify`` as in :meth:`get`. No torch: what publishing a cached
        tensor into an output shard reads."""
        try:
            raw = self._load(key, verify)
        except _Corrupt:
            self.delete(key)
            raw = None
        if raw is None:
            self._count(misses=1)
        else:
            self._count(hits=1, bytes_read=raw.data.nbytes)
        return raw

    def _load(self, key: str, verify: bool) -> RawTensor | None:
        handle = self._cache.get(key, read=True, retry=True)
        if handle is None:
            return None
        with handle:
            code, shape, start, nbytes, digest = _read_header(handle, key)
            if os.fstat(handle.fileno()).st_size != start + nbytes:
                raise _Corrupt("blob size does not match its header")
            if nbytes == 0:
                return RawTensor(code, tuple(shape), memoryview(b""))
            if nbytes < _MMAP_MIN:
                handle.seek(start)
                buf: mmap.mmap | bytearray = bytearray(handle.read(nbytes))
                start = 0
            else:
                buf = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
        data = memoryview(buf)[start : start + nbytes]
        if verify and xxhash.xxh3_128_hexdigest(data) != digest:
            data.release()
            if isinstance(buf, mmap.mmap):
                buf.close()
            raise _Corrupt("data digest mismatch")
        return RawTensor(code, tuple(shape), data)

    def info(self, key: str) -> tuple[str, tuple[int, ...], int] | None:
        """(dtype code, shape, nbytes) from the header only; None if missing or unreadable."""
        handle = self._cache.get(key, read=True, retry=True)
        if handle is None:
            return None
        with handle:
            try:
                code, shape, _, nbytes, _ = _read_header(handle, key)
            except _Corrupt:
                return None
        return code, tuple(shape), nbytes

    def path_of(self, key: str) -> str | None:
        """The blob's file path (debugging, ``safe_open``); None if missing."""
        handle = self._cache.get(key, read=True, retry=True)
        if handle is None:
            return None
        handle.close()
        return handle.name

    # -- bookkeeping -------------------------------------------------------------------------
    def __contains__(self, key: object) -> bool:
        return key in self._cache

    def delete(self, key: str) -> bool:
        """Drop key; False if it was not there."""
        return bool(self._cache.delete(key, retry=True))

    def keys(self) -> Iterator[str]:
        """All keys (a live iteration: keys added or dropped meanwhile may or may not appear)."""
        return iter(self._cache)

    def __len__(self) -> int:
        return len(self._cache)

    def volume(self) -> int:
        """Bytes on disk: blob files plus the SQLite index."""
        return int(self._cache.volume())

    def clear(self) -> None:
        self._cache.clear(retry=True)

    def verify_all(self) -> list[str]:
        """Re-hash every blob; corrupt ones are dropped and their keys returned."""
        bad = []
        for key in list(self.keys()):
            try:
                self._load(key, verify=True)
            except _Corrupt:
                self.delete(key)
                bad.append(key)
        return bad

    def evict_to(self, size: int) -> int:
        """Evict least-recently-used blobs until volume() <= size; returns blob bytes freed.

        The SQLite file never shrinks, so a size below its own size empties the store.
        """
        freed = 0
        while self.volume() > size:
            rows = self._lru_rows(16)
            if not rows:
                break
            for key, nbytes in rows:
                if self._cache.delete(key, retry=True):
                    freed += nbytes
                if self.volume() <= size:
                    break
        return freed

    def _lru_rows(self, limit: int) -> list[tuple[str, int]]:
        # diskcache exposes no public "least recently used" query; this mirrors its own
        # eviction SELECT for the LRU policy (read-only, so it cannot break its invariants).
        rows = self._cache._sql(  # noqa: SLF001
            "SELECT key, size FROM Cache ORDER BY access_time LIMIT ?", (limit,)
        ).fetchall()
        return [(k, int(s or 0)) for k, s in rows]

    def sweep_orphans(self, min_age_s: float = 3600.0) -> int:
        """Delete blob files no row points at (left by killed writers); returns bytes freed.

        Only files older than ``min_age_s`` go, so a put in flight elsewhere (file written,
        row not yet inserted) is never swept.
        """
        known = {
            row[0]
            for row in self._cache._sql(  # noqa: SLF001
                "SELECT filename FROM Cache WHERE filename IS NOT NULL"
            ).fetchall()
        }
        cutoff = time.time() - min_age_s
        freed = 0
        for path in self.directory.glob("*/*/*.val"):
            rel = path.relative_to(self.directory).as_posix()
            try:
                st = path.stat()
                if rel not in known and st.st_mtime < cutoff:
                    path.unlink()
                    freed += st.st_size
            except OSError:
                continue
        return freed

    def close(self) -> None:
        self._cache.close()

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for name, d in deltas.items():
                setattr(self, name, getattr(self, name) + d)
