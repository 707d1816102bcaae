"""Output shard sizes: layer groups packed into shards of at most a size (``--out-shard-size``).

By default every layer is a shard of its own, so one layer's change rewrites one file. With a
size (mergekit's ``--out-shard-size``, default 5B there), consecutive groups are packed greedily
in layer order. The packing depends on tensor shapes and dtypes only, never on values, so an
edit that changes weights keeps every boundary and rewrites only the shards it touches.
A group is never split: one larger than the size is a shard of its own.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

__all__ = ["pack_groups", "parse_shard_size"]

_DECIMAL = {"K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


def parse_shard_size(text: str) -> int:
    """mergekit's sizes: ``5B`` = 5e9 bytes, ``500M``, ``64K`` or a plain number of bytes.

    Raises:
        ValueError: not such a size, or not positive.
    """
    t = text.strip().upper()
    mult = 1
    if t and t[-1] in _DECIMAL:
        t, mult = t[:-1], _DECIMAL[t[-1]]
    value = int(float(t) * mult)  # ValueError on junk
    if value <= 0:
        raise ValueError(text)
    return value


def pack_groups(groups: Sequence[tuple[Hashable, int]], max_bytes: int) -> dict[Hashable, str]:
    """Shard file names for ``groups`` (in layer order, each with its byte size).

    Returns:
        group -> ``model.safetensors`` when one shard holds all, else ``model-0000i-of-0000n.safetensors``.

    Example:
        >>> sorted(set(pack_groups([("pre", 4), ("l0", 3), ("l1", 3), ("post", 5)], 7).items()))[:2]
        [('l0', 'model-00001-of-00003.safetensors'), ('l1', 'model-00002-of-00003.safetensors')]
    """
    index: dict[Hashable, int] = {}
    shard, used = 0, 0
    for group, size in groups:
        if used and used + size > max_bytes:
            shard, used = shard + 1, 0
        index[group] = shard
        used += size
    n = shard + 1
    if n == 1:
        return {g: "model.safetensors" for g in index}
    return {g: f"model-{i + 1:05d}-of-{n:05d}.safetensors" for g, i in index.items()}
