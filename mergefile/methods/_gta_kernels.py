"""Fused CPU kernels for bfloat16 task arithmetic and TIES, giving torch's step-by-step bits.

Why: on CPU, every bf16 torch op converts to float32 and back, and a TIES merge of N task vectors
is ~15 N such passes over the tensor (subtract, mask, weight, elect, agree, masked sums, divide,
add): a weight edit spends most of its time there. These numba kernels do the same arithmetic in
one pass per tensor, rounding to bf16 exactly where the torch steps of ``methods/gta.py`` round
(float32 opmath, round-to-nearest-even, sums accumulated in float32 from +0.0 in model order), so
the results are the same bits; ``tests/methods/test_gta_kernels.py`` holds them to the torch steps.

They only take the common case: bf16 on CPU, at most :data:`MAX_MODELS` models, numba installed.
Every kernel reports whether all it computed was finite; when not (NaN/inf inputs, an overflow),
the caller reruns the torch steps, whose NaN bits the kernels do not imitate.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from mergefile._lazy import torch

WARM = ("mergefile.methods._gta_kernels_numba",)  # imported (and warmed up) ahead by a build
MAX_MODELS = 16  # torch's dim-0 bf16 sum is a plain float32 loop over this few rows (checked)


@functools.cache
def _numba():
    """numba's ``njit``, or None where numba is not installed (the torch steps are used)."""
    try:
        import numba
    except ImportError:
        return None
    return numba


def available(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether the kernels can take these tensors (bf16, CPU, contiguous, few enough)."""
    return (
        0 < len(tensors) <= MAX_MODELS + 1
        and all(t.dtype == torch.bfloat16 and t.device.type == "cpu" and t.is_contiguous() for t in tensors)
        and _numba() is not None
    )


def _bits(t: torch.Tensor):
    """The tensor's bf16 bits as a flat uint16 numpy array (no copy)."""
    import numpy as np

    return t.reshape(-1).view(torch.int16).numpy().view(np.uint16)


def _kernels():
    """The compiled kernels (``_gta_kernels_numba``: imported on first use, numba is heavy)."""
    from mergefile.methods import _gta_kernels_numba as nb

    return nb.masked_delta, nb.combine


def masked_delta(x: torch.Tensor, base: torch.Tensor, packed, scale: torch.Tensor | None) -> torch.Tensor | None:
    """``(x - base) * mask`` (times ``scale``) in bf16, the mask as ``np.packbits`` bytes.

    None when a value is not finite: the caller computes it with torch instead.
    """
    import numpy as np

    out = torch.empty_like(x)
    sc = np.uint16(0) if scale is None else _bits(scale.reshape(1))[0]
    ok = _kernels()[0](_bits(x), _bits(base), packed, sc, scale is not None, _bits(out))
    return out if ok else None


def combine(
    deltas: Sequence[torch.Tensor],
    subtract: bool,
    base: torch.Tensor,
    weights: Sequence[float],
    elect: bool,
    normalize: bool,
    lam: float,
) -> torch.Tensor | None:
    """``base + lam * combine(w_i * delta_i)`` as ``gta._merge`` computes it in bf16.

    ``deltas`` are N bf16 tensors: task vectors, or the inputs themselves with ``subtract``. None
    when a value is not finite (the caller then runs the torch steps).
    """
    import numpy as np

    wb = torch.tensor(list(weights), dtype=torch.bfloat16)
    wts = wb.float().numpy()
    divisor = np.float32(1.0)
    if normalize and not elect:
        s = wb.sum()
        divisor = np.float32(float(s) if abs(float(s)) >= 1e-8 else 1.0)
    out = torch.empty_like(base)
    flat = tuple(_bits(d) for d in deltas)  # no (N, ...) stack; one compiled kernel per N
    ok = _kernels()[1](
        flat, subtract, _bits(base), wts, elect, normalize, divisor, np.float32(lam), lam != 1.0, _bits(out)
    )
    return out if ok else None
