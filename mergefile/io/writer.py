"""Streaming, atomic safetensors writer.

``safetensors.torch.save_file`` needs every tensor in memory at once; a merged 70B shard does not
fit. Here the header is computed from dtypes and shapes alone, then tensors are fetched and
written one at a time. The layout matches ``save_file`` byte for byte when the entries come in
the same order (save_file sorts by dtype alignment, largest first, then by name; we keep the
caller's order so shards can be laid out by layer).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from mergefile._lazy import torch
from mergefile.io.header import DTYPE_CODES, DTYPE_SIZES

__all__ = ["RawTensor", "raw_tensor", "tensor_bytes", "write_index", "write_safetensors"]

Fetch = Callable[[], "memoryview | bytes"]
Entry = tuple[str, str, tuple[int, ...], Fetch]

if sys.byteorder != "little":  # pragma: no cover - safetensors is little-endian on disk
    raise ImportError("mergefile.io.writer writes raw tensor memory and needs a little-endian host")


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a tensor, without a copy when it is a contiguous CPU tensor.

    Non-CPU or non-contiguous tensors are moved/made contiguous first (one copy). The view keeps
    the tensor's memory alive, so the caller may drop the tensor.
    """
    if t.dtype not in DTYPE_CODES:
        raise ValueError(f"dtype {t.dtype} cannot be stored in safetensors")
    t = t.detach()
    if t.device.type != "cpu":
        t = t.to("cpu")
    if not t.is_contiguous():
        t = t.contiguous()
    if t.numel() == 0:
        return memoryview(b"")
    # numpy has no bf16/fp8: reinterpret as bytes; the array's base keeps the tensor alive.
    return memoryview(t.reshape(-1).view(torch.uint8).numpy()).cast("B")


class RawTensor(NamedTuple):
    """A tensor as the bytes a safetensors file holds: what copying a cached tensor into an
    output shard needs, with no torch (a build whose tensors all come from the cache never
    waits for torch to import)."""

    code: str  # safetensors dtype code, e.g. "BF16"
    shape: tuple[int, ...]
    data: memoryview  # little-endian, C order, ``prod(shape) * itemsize`` bytes


def raw_tensor(t: torch.Tensor) -> RawTensor:
    """A tensor's :class:`RawTensor` (no copy for a contiguous CPU tensor; see tensor_bytes)."""
    return RawTensor(DTYPE_CODES[t.dtype], tuple(t.shape), tensor_bytes(t))


def _header_bytes(entries: Sequence[Entry], metadata: dict[str, str] | None) -> tuple[bytes, list[int]]:
    """Serialized, space-padded header as safetensors writes it, and each entry's byte size."""
    header: dict[str, object] = {}
    if metadata is not None:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ValueError("safetensors metadata must map strings to strings")
        # Sorted for reproducible files (safetensors itself uses a hash map: any order is valid).
        header["__metadata__"] = {k: metadata[k] for k in sorted(metadata)}
    sizes: list[int] = []
    offset = 0
    for name, code, shape, _ in entries:
        if name in header:
            raise ValueError(f"tensor name '{name}' appears twice (or is reserved)")
        if code not in DTYPE_SIZES:
            raise ValueError(f"unknown safetensors dtype code {code!r} for '{name}'")
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"negative dimension in shape {shape} of '{name}'")
        nbytes = math.prod(shape) * DTYPE_SIZES[code]
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        sizes.append(nbytes)
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return raw, sizes


def _fsync_dir(folder: str) -> None:
    """Make a rename durable (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def _atomic_file(path: str):
    """A file handle on ``path + ".tmp"``, fsynced and renamed over ``path`` on success.

    Readers see the old file or the new one, never half; on any error the temp file is removed.
    """
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def _atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a small file through a temp file and rename: readers see old or new, never half."""
    with _atomic_file(os.fspath(path)) as f:
        f.write(data)


def write_safetensors(
    path: str | Path,
    entries: Sequence[Entry],
    metadata: dict[str, str] | None = None,
    durable: bool = True,
) -> int:
    """Write a safetensors file, holding one tensor in memory at a time.

    Args:
        path: destination file; written as ``path + ".tmp"``, fsynced, then renamed over ``path``.
        entries: ``(name, dtype_code, shape, fetch)`` in file order; each ``fetch()`` is called
            once, in order, right before its bytes are written, and must return exactly
            ``prod(shape) * itemsize`` bytes (e.g. ``lambda: tensor_bytes(t)``).
        metadata: ``__metadata__`` strings (written with sorted keys), or None for none.
        durable: write through a temp file, fsync and rename (readers never see half a file).
            False writes ``path`` directly and leaves syncing to the caller: for files inside a
            private folder that is itself published atomically (``run/publish.py``).

    Returns:
        Bytes written (the file's size).

    Raises:
        ValueError: duplicate names, unknown dtype codes, or a fetch returning the wrong size.

    Example:
        >>> write_safetensors("w.safetensors", [("w", "F32", (2,), lambda: tensor_bytes(t))])
    """
    path = os.fspath(path)
    header, sizes = _header_bytes(entries, metadata)
    written = 0
    with _atomic_file(path) if durable else open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little"))
        f.write(header)
        written = 8 + len(header)
        for (name, code, shape, fetch), size in zip(entries, sizes):
            data = fetch()
            got = data.nbytes if isinstance(data, memoryview) else len(data)
            if got != size:
                raise ValueError(f"tensor '{name}' ({code}{list(shape)}) should be {size} bytes, fetch gave {got}")
            f.write(data)
            written += got
            del data
    return written


def write_index(
    folder: str | Path,
    weight_map: dict[str, str],
    total_size: int,
    metadata: dict | None = None,
) -> None:
    """Write ``model.safetensors.index.json`` as transformers does (sorted weight map), atomically.

    Args:
        folder: the model folder.
        weight_map: tensor name -> shard file name (relative to ``folder``).
        total_size: sum of tensor bytes over all shards (the ``metadata.total_size`` field).
        metadata: extra ``metadata`` fields (e.g. ``{"mergebuild_version": ...}``).
    """
    meta = {"total_size": int(total_size), **(metadata or {})}
    doc = {"metadata": meta, "weight_map": {k: weight_map[k] for k in sorted(weight_map)}}
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    _atomic_write_bytes(Path(folder) / "model.safetensors.index.json", text.encode("utf-8"))
