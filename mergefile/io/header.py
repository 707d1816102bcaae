"""Safetensors headers, read without touching tensor data.

Planning a rebuild needs every tensor's name, dtype, shape and byte range, never its values: a
header is a few kilobytes at the start of a file that may hold gigabytes. This module also owns the
dtype vocabulary (safetensors codes, torch dtypes, the names ``config.json`` uses).
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mergefile._lazy import torch
from mergefile.errors import UserError, did_you_mean

__all__ = [
    "DTYPE_CODES",
    "DTYPE_SIZES",
    "code_name",
    "dtype_code",
    "TORCH_DTYPES",
    "TensorInfo",
    "dtype_name",
    "parse_dtype",
    "read_header",
]

# safetensors refuses headers above 100 MB; a larger length field means a corrupt or foreign file.
MAX_HEADER_BYTES = 100_000_000

# safetensors code -> (torch attribute / config.json name, bytes per element). Kept free of torch
# objects so that planning (the no-op rebuild path) never has to import torch.
_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U64": ("uint64", 8),
    "U32": ("uint32", 4),
    "U16": ("uint16", 2),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
}
DTYPE_SIZES: dict[str, int] = {code: size for code, (_, size) in _DTYPES.items()}


class _TorchDtypes(Mapping):
    """``code -> torch.dtype``, built on first use (importing torch then, not at import time)."""

    def __init__(self, inverse: bool = False):
        self._inverse = inverse
        self._table: dict | None = None

    def _get(self) -> dict:
        if self._table is None:
            table = {code: getattr(torch, name) for code, (name, _) in _DTYPES.items()}
            self._table = {v: k for k, v in table.items()} if self._inverse else table
        return self._table

    def __getitem__(self, key):
        if not self._inverse and isinstance(key, str):
            if key not in _DTYPES:
                raise KeyError(key)
        return self._get()[key]

    def __contains__(self, key) -> bool:
        if not self._inverse and isinstance(key, str):
            return key in _DTYPES
        return key in self._get()

    def __iter__(self):
        return iter(_DTYPES) if not self._inverse else iter(self._get())

    def __len__(self) -> int:
        return len(_DTYPES)


TORCH_DTYPES: Mapping[str, torch.dtype] = _TorchDtypes()
DTYPE_CODES: Mapping[torch.dtype, str] = _TorchDtypes(inverse=True)

_ALIASES: dict[str, str] = {
    "bfloat16": "BF16",
    "bf16": "BF16",
    "float16": "F16",
    "fp16": "F16",
    "f16": "F16",
    "half": "F16",
    "float32": "F32",
    "fp32": "F32",
    "f32": "F32",
    "float": "F32",
    "float64": "F64",
    "fp64": "F64",
    "f64": "F64",
    "double": "F64",
    "int64": "I64",
    "i64": "I64",
    "long": "I64",
    "int32": "I32",
    "i32": "I32",
    "int": "I32",
    "int16": "I16",
    "i16": "I16",
    "short": "I16",
    "int8": "I8",
    "i8": "I8",
    "uint64": "U64",
    "u64": "U64",
    "uint32": "U32",
    "u32": "U32",
    "uint16": "U16",
    "u16": "U16",
    "uint8": "U8",
    "u8": "U8",
    "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e4m3": "F8_E4M3",
    "fp8_e4m3": "F8_E4M3",
    "f8_e4m3": "F8_E4M3",
    "e4m3": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "fp8_e5m2": "F8_E5M2",
    "f8_e5m2": "F8_E5M2",
    "e5m2": "F8_E5M2",
}


def dtype_code(name: str) -> str:
    """The safetensors code of a user-facing dtype name, without importing torch.

    Raises:
        UserError: the name is not a known dtype (with a did-you-mean hint).
    """
    key = str(name).strip()
    if key in _DTYPES:
        return key
    key = key.lower().removeprefix("torch.")
    if key in _ALIASES:
        return _ALIASES[key]
    hint = did_you_mean(key, _ALIASES)
    if hint is None:
        hint = "use one of bfloat16, float16, float32, float64, int8, ..."
    raise UserError(f"unknown dtype '{name}'", hint=hint)


def code_name(code: str) -> str:
    """The name ``config.json`` uses for a safetensors code ("BF16" -> "bfloat16")."""
    return _DTYPES[code][0]


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: enough to read it, hash it, or plan around it.

    ``begin``/``end`` are absolute byte offsets in ``file`` (header included), so a reader can
    mmap the file and slice without re-parsing the header.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        """Size of the tensor's data in bytes."""
        return self.end - self.begin


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """A torch dtype from a user-facing name ("bfloat16", "bf16", "torch.float16", "BF16", ...).

    Raises:
        UserError: the name is not a known dtype (with a did-you-mean hint).
    """
    if not isinstance(name, str):
        return name
    return TORCH_DTYPES[dtype_code(name)]


def dtype_name(dtype: torch.dtype) -> str:
    """The name ``config.json`` uses for a dtype ("bfloat16", "float32", ...)."""
    return str(dtype).removeprefix("torch.")


def _corrupt(path: str, why: str) -> UserError:
    return UserError(
        f"'{path}' is not a valid safetensors file: {why}. The file may be truncated (an "
        "interrupted download or copy) or not be safetensors at all; re-download or re-create it."
    )


def _parse_entry(path: str, name: str, entry: object, data_start: int, size: int) -> TensorInfo:
    """Validate one header entry and turn it into a TensorInfo."""
    if not isinstance(entry, dict):
        raise _corrupt(path, f"header entry for '{name}' is not an object")
    code, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if code not in TORCH_DTYPES:
        raise UserError(
            f"'{path}': tensor '{name}' has dtype {code!r}, which mergebuild does not support "
            f"(supported: {', '.join(TORCH_DTYPES)})"
        )
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise _corrupt(path, f"tensor '{name}' has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise _corrupt(path, f"tensor '{name}' has invalid data_offsets {offsets!r}")
    expected = math.prod(shape) * DTYPE_SIZES[code]
    if offsets[1] - offsets[0] != expected:
        raise _corrupt(
            path,
            f"tensor '{name}' spans {offsets[1] - offsets[0]} bytes but {code}{shape} needs {expected}",
        )
    begin, end = data_start + offsets[0], data_start + offsets[1]
    if end > size:
        raise _corrupt(path, f"tensor '{name}' ends at byte {end} but the file has {size} bytes")
    return TensorInfo(name, code, tuple(shape), path, begin, end)


def read_header(path: str | Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Read a safetensors header (and nothing else).

    Args:
        path: a ``.safetensors`` file.

    Returns:
        ``(tensors, metadata)``: TensorInfo by name in header order, and the ``__metadata__``
        strings ({} when absent).

    Raises:
        UserError: the file is missing, truncated, or its header is not valid safetensors.
    """
    real = os.path.realpath(path)
    try:
        with open(real, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise _corrupt(real, f"it has only {size} bytes, less than the 8-byte length field")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise _corrupt(real, f"its header length field says {n} bytes, file has {size}")
            raw = f.read(n)
    except FileNotFoundError:
        raise UserError(f"safetensors file '{path}' does not exist") from None
    except IsADirectoryError:
        raise UserError(f"'{path}' is a folder, expected a safetensors file") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _corrupt(real, f"its header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise _corrupt(real, "its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _corrupt(real, "its __metadata__ is not a map of strings to strings")
    data_start = 8 + n
    tensors = {name: _parse_entry(real, name, e, data_start, size) for name, e in header.items()}
    return tensors, dict(metadata)
