"""Small builders shared by the method tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from mergefile.methods import MergeContext, apply_method, get_method


def t(*values: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A 1-D tensor from literal numbers."""
    return torch.tensor(values, dtype=dtype)


def ctx(base_index: int | None = None, seed: int | None = 0, name: str = "model.layers.0.mlp.weight") -> MergeContext:
    """A context with a fresh generator seeded ``seed`` (None: no generator)."""
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    return MergeContext(tensor_name=name, base_index=base_index, generator=gen)


def run(
    method: str,
    tensors: Sequence[torch.Tensor],
    per_model: Sequence[Mapping[str, Any]] | None = None,
    params: Mapping[str, Any] | None = None,
    base_index: int | None = None,
    seed: int | None = 0,
) -> torch.Tensor:
    """Run a registered method through stage + merge with defaults filled in."""
    return apply_method(get_method(method), tensors, per_model, params, ctx(base_index, seed))


def stage(method: str, x: torch.Tensor, base: torch.Tensor, seed: int = 0, **params: Any) -> torch.Tensor:
    """Run only a staged method's stage, filling its declared defaults."""
    m = get_method(method)
    assert m.stage is not None
    values = {p.name: p.default for p in m.params}
    values.update(params)
    return m.stage.fn(x, base, {n: values[n] for n in m.stage.params}, ctx(0, seed))
