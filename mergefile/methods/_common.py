"""Helpers shared by the method modules: working dtype, base lookup, seeded draws, errors.

mergekit's ``dtype`` is its compute dtype, and mergebuild computes as mergekit 0.1.5 does: the
task-arithmetic family, ``sce``, ``model_stock``, ``nearswap``, ``nuslerp``, ``multislerp`` and
``karcher`` compute in the inputs' dtype (:func:`native`, rounding after each step as mergekit
does, so outputs equal mergekit's), while ``linear`` and ``slerp`` accumulate half-precision inputs in float32
(:func:`up`), as mergekit 0.1.5 does for those. A user who wants float32 math everywhere writes
``dtype = float32`` and ``out_dtype = bfloat16``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mergefile._lazy import torch
from mergefile.errors import ConfigError
from mergefile.methods.base import MergeContext


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype to compute in: float32 for half types and integers, else the dtype itself."""
    if dtype in (torch.float16, torch.bfloat16) or not dtype.is_floating_point:
        return torch.float32
    return dtype


def up(t: torch.Tensor) -> torch.Tensor:
    """``t`` in its working dtype (a no-op for float32/float64)."""
    return t.to(work_dtype(t.dtype))


def native(t: torch.Tensor) -> torch.Tensor:
    """``t`` in the dtype mergekit computes it in: its own when floating point, else float32."""
    return t if t.dtype.is_floating_point else t.to(torch.float32)


_SAME_SIZE_INT = {2: "int16", 4: "int32", 8: "int64"}


def factor(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool ``mask`` as 0/1 in the floating ``dtype``: the values ``mask.to(dtype)`` gives.

    Built from bits (``mask`` as bytes, widened, times the bits of 1.0) because torch's CPU kernels
    that read or write bool are several times slower than integer ones; a product with the result
    equals the product with the bool mask, NaN * 0 included.
    """
    itype = getattr(torch, _SAME_SIZE_INT[torch.empty((), dtype=dtype).element_size()])
    one = torch.ones((), dtype=dtype, device=mask.device).view(itype)
    return mask.view(torch.uint8).to(itype).mul_(one).view(dtype)


def finish(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round a working-dtype result back to ``dtype`` (integers are rounded, not truncated)."""
    if not dtype.is_floating_point and t.dtype.is_floating_point:
        t = torch.round(t)
    return t.to(dtype)


def out_dtype(tensors: Sequence[torch.Tensor], ctx: MergeContext) -> torch.dtype:
    """The contract's output dtype: the base's, else the first input's."""
    if ctx.base_index is not None:
        return tensors[ctx.base_index].dtype
    return tensors[0].dtype


def others(tensors: Sequence[torch.Tensor], ctx: MergeContext) -> list[int]:
    """Indices of the inputs that are not the base, in recipe order."""
    return [i for i in range(len(tensors)) if i != ctx.base_index]


def require_base(method: str, tensors: Sequence[torch.Tensor], ctx: MergeContext) -> torch.Tensor:
    """The base tensor, or a clear error when the planner gave none."""
    if ctx.base_index is None:
        raise method_error(method, ctx, "needs a base model", "set base=...")
    return tensors[ctx.base_index]


def method_error(method: str, ctx: MergeContext, message: str, hint: str | None = None) -> ConfigError:
    """A user error that names the method and the tensor it happened on."""
    return ConfigError(f"{method}: {message} (tensor '{ctx.tensor_name}')", hint=hint)


def model_param(method: str, per_model: Mapping[str, Any], name: str, index: int, ctx: MergeContext) -> float:
    """A required per-model number; a clear error instead of mergekit's TypeError on None."""
    value = per_model.get(name)
    if value is None:
        raise method_error(method, ctx, f"input #{index + 1} has no '{name}'", f"give every model a {name}")
    return float(value)


def draw_uniform(shape: Sequence[int], gen: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """U[0,1) float32 numbers drawn on CPU from ``gen``, then moved to ``device``.

    Drawing on CPU makes CPU and CUDA builds of the same node pick the same random masks. With
    no generator (a direct call from a test) a fixed seed is used: never the global RNG.
    """
    if gen is None:
        gen = torch.Generator().manual_seed(0)
    return torch.rand(tuple(shape), generator=gen, dtype=torch.float32).to(device)
