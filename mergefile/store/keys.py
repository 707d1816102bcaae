"""Content identity: the one place where keys are computed.

A key is the blake3 digest of a canonical JSON document. Two pieces of work get the same key
exactly when they would produce the same bytes, so equal work is deduplicated and a changed
input, parameter or method version changes every key downstream of it.

Number rule: numbers that compare equal in Python give the same key, so ``weight=1`` and
``weight=1.0`` are one parameter value (an integral float is written as an integer). ``True`` is
not ``1``: booleans are switches, never numbers, and stay distinct. NaN and infinities are
rejected because they have no canonical, comparable JSON form.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import blake3

# Numeric-semantics version of every key. Bump it when the meaning of stored results changes
# for all nodes at once (canonical JSON rules, dtype handling, accumulation precision, the
# blob format): every key changes, so nothing computed under the old rules is ever reused.
# A single method's math change bumps that method's own version instead.
HASH_VERSION: int = 1

_KEY_CHARS = 32  # 128 bits of blake3, hex
_RESERVED = ("hash_version", "kind")


def _normalize(obj: Any, path: str) -> Any:
    """Convert obj into plain JSON values, enforcing the canonical rules above."""
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise TypeError(f"{path}: {obj!r} has no canonical form (NaN/inf are not allowed)")
        if obj.is_integer():
            return int(obj)  # 1.0 -> 1: equal numbers, equal keys
        return float(obj)  # json writes repr(float), which round-trips exactly
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                # json.dumps would coerce 1 -> "1" and silently merge distinct keys
                raise TypeError(f"{path}: mapping key {k!r} is not a str")
            out[str(k)] = _normalize(v, f"{path}.{k}")
        return out
    if isinstance(obj, list | tuple):
        return [_normalize(v, f"{path}[{i}]") for i, v in enumerate(obj)]
    raise TypeError(f"{path}: {type(obj).__name__} is not canonical-JSON serializable")


class _NotCanonical(Exception):
    pass


def _fast_normalize(obj: Any) -> Any:
    """``_normalize`` without building a path for every value (keys are computed by the
    thousand on every build); any doubt raises ``_NotCanonical`` and the slow path explains."""
    t = type(obj)
    if t is str or t is bool or obj is None:
        return obj
    if t is int:
        return obj
    if t is float:
        if not math.isfinite(obj):
            raise _NotCanonical
        return int(obj) if obj.is_integer() else obj
    if t is dict:
        out = {}
        for k, v in obj.items():
            if type(k) is not str:
                raise _NotCanonical
            out[k] = _fast_normalize(v)
        return out
    if t is list or t is tuple:
        return [_fast_normalize(v) for v in obj]
    raise _NotCanonical  # subclasses, Mappings, numpy scalars...: the general rules decide


def canonical_json(obj: Any) -> bytes:
    """Deterministic UTF-8 JSON: sorted keys, no whitespace, tuples as lists.

    Raises:
        TypeError: for NaN/inf, non-str mapping keys, and non-JSON types (sets, bytes, objects).
    """
    try:
        norm = _fast_normalize(obj)
    except _NotCanonical:
        norm = _normalize(obj, "$")
    text = json.dumps(norm, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def _blake3_hex(data: bytes, chars: int = _KEY_CHARS) -> str:
    return blake3.blake3(data).hexdigest(length=chars // 2)


def key_of(kind: str, payload: Mapping[str, Any]) -> str:
    """Key of a piece of work: blake3 of canonical JSON of (HASH_VERSION, kind, payload).

    Args:
        kind: what the payload describes ("input", "node", "eval", ...), so equal payloads of
            different kinds never collide.
        payload: everything the result depends on.

    Returns:
        32 lowercase hex characters.
    """
    clash = [k for k in _RESERVED if k in payload]
    if clash:
        raise ValueError(f"payload may not use reserved field(s) {clash}")
    return _blake3_hex(canonical_json({"hash_version": HASH_VERSION, "kind": kind, **payload}))


def input_key(digest: str, dtype: str, shape: Sequence[int]) -> str:
    """Key of an input tensor from its byte digest, dtype code and shape.

    Dtype and shape are part of it because equal bytes reinterpreted differently are a
    different tensor.
    """
    return key_of("input", {"digest": digest, "dtype": dtype, "shape": [int(s) for s in shape]})


def seed_from_key(key: str, seed: int = 0) -> int:
    """A 63-bit seed for ``torch.Generator.manual_seed`` from a node key and the recipe seed.

    Randomness derived from the node's own key never depends on execution order or on which
    other tensors were built.
    """
    digest = blake3.blake3(canonical_json({"domain": "seed", "key": key, "seed": seed})).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)
