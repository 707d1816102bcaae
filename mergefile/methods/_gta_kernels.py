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


def available_bits(n_inputs: int) -> bool:
    """Whether the kernels can merge this many bf16 inputs given as bits (numba installed)."""
    return 0 < n_inputs <= MAX_MODELS + 1 and _numba() is not None


def _bits(t: torch.Tensor):
    """The tensor's bf16 bits as a flat uint16 numpy array (no copy)."""
    import numpy as np

    return t.reshape(-1).view(torch.int16).numpy().view(np.uint16)


def _kernels():
    """The compiled kernels (``_gta_kernels_numba``: imported on first use, numba is heavy)."""
    from mergefile.methods import _gta_kernels_numba as nb

    return nb.masked_delta, nb.combine, nb.combine_masked


def bf16_round(values: Sequence[float]):
    """Python floats rounded to bf16 as torch's ``torch.tensor(values, dtype=bfloat16)`` rounds
    them (to float32, then to nearest even), returned as float32: what the kernels multiply by."""
    import numpy as np

    with np.errstate(over="ignore"):  # a double beyond float32 becomes inf, as in torch
        u = np.asarray(values, dtype=np.float64).astype(np.float32).view(np.uint32)
    r = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)) << np.uint32(16)
    return r.astype(np.uint32).view(np.float32)


def bf16_sum(values) -> float:
    """A bf16 vector's sum as torch gives it for a few entries: float32 in order, one rounding."""
    import numpy as np

    acc = np.float32(0.0)
    for v in values:
        acc = np.float32(acc + np.float32(v))
    return float(bf16_round([float(acc)])[0])


def packed_scale_bits(packed) -> int | None | bool:
    """The bf16 scale :meth:`Keep.pack` wrote after the mask bits of a bf16 delta, as its bits.

    None: no scale; False: a float32 scale (multiplied in float32, which the kernels do not do).
    """
    code = int(packed[-1])
    if code == 0:
        return None
    if code != 1:
        return False
    return int(packed[-3]) | int(packed[-2]) << 8


def _blocked(call, n: int, values: Sequence, masks: Sequence = ()):
    """Run a kernel over ``n`` entries in whole blocks: ``call(values, masks, out)`` on the
    arrays' first ``n - n % BLOCK`` entries (views), then on zero-padded copies of the rest (the
    kernels' loops have a constant trip count; see ``_gta_kernels_numba``). ``masks`` are packed
    bits, 8 entries a byte. The result's bits, or None when the kernel reported a non-finite
    value."""
    import numpy as np

    from mergefile.methods._gta_kernels_numba import BLOCK

    out = np.empty(n, dtype=np.uint16)
    full = n - n % BLOCK
    if full and not call([v[:full] for v in values], [m[: full // 8] for m in masks], out[:full]):
        return None
    if full < n:
        tail = n - full
        vs = [np.zeros(BLOCK, dtype=np.uint16) for _ in values]
        for pad, v in zip(vs, values):
            pad[:tail] = v[full:n]
        ms = [np.zeros(BLOCK // 8, dtype=np.uint8) for _ in masks]
        for pad, m in zip(ms, masks):
            pad[: (tail + 7) // 8] = m[full // 8 : (n + 7) // 8]
        rest = np.empty(BLOCK, dtype=np.uint16)
        if not call(vs, ms, rest):
            return None
        out[full:] = rest[:tail]
    return out


def masked_delta_bits(x, base, packed, scale: int | None):
    """:func:`masked_delta` on bf16 bits (flat uint16 arrays; ``scale`` as bits), no torch: the
    result's bits, or None when a value is not finite."""
    import numpy as np

    sc = np.uint16(0 if scale is None else scale)
    kernel = _kernels()[0]
    return _blocked(
        lambda v, m, out: kernel(v[0], v[1], m[0], sc, scale is not None, out), x.size, (x, base), (packed,)
    )


def masked_delta(x: torch.Tensor, base: torch.Tensor, packed, scale: torch.Tensor | None) -> torch.Tensor | None:
    """``(x - base) * mask`` (times ``scale``) in bf16, the mask as ``np.packbits`` bytes.

    None when a value is not finite: the caller computes it with torch instead.
    """
    sc = None if scale is None else int(_bits(scale.reshape(1))[0])
    bits = masked_delta_bits(_bits(x), _bits(base), packed, sc)
    return None if bits is None else torch.from_numpy(bits).view(torch.bfloat16).reshape(x.shape)


def combine_bits(
    deltas: Sequence,
    subtract: bool,
    base,
    weights: Sequence[float],
    elect: bool,
    normalize: bool,
    lam: float,
):
    """:func:`combine` on bf16 bits (flat uint16 arrays), no torch: the result's bits or None."""
    import numpy as np

    wts, divisor = _weights(weights, elect, normalize)
    kernel, n = _kernels()[1], len(deltas)  # a tuple, no (N, ...) stack: one compiled kernel per N

    def call(v, _, out):
        return kernel(tuple(v[:n]), subtract, v[n], wts, elect, normalize, divisor, np.float32(lam), lam != 1.0, out)

    return _blocked(call, base.size, (*deltas, base))


def _weights(weights: Sequence[float], elect: bool, normalize: bool):
    """The weights as the kernels take them (bf16-rounded, float32) and the plain sum's divisor."""
    import numpy as np

    wts = bf16_round(list(weights))
    divisor = np.float32(1.0)
    if normalize and not elect:
        s = bf16_sum(wts)
        divisor = np.float32(s if abs(s) >= 1e-8 else 1.0)
    return wts, divisor


def combine_masked_bits(
    xs: Sequence,
    base,
    packed: Sequence,
    scales: Sequence[int | None],
    weights: Sequence[float],
    elect: bool,
    normalize: bool,
    lam: float,
):
    """:func:`masked_delta_bits` of every model, then :func:`combine_bits`, in one pass (the
    task vectors are never stored): the same bits, or None when a value is not finite."""
    import numpy as np

    wts, divisor = _weights(weights, elect, normalize)
    sc = np.array([0 if s is None else s for s in scales], dtype=np.uint16)
    has = np.array([s is not None for s in scales], dtype=np.bool_)
    kernel, n = _kernels()[2], len(xs)

    def call(v, m, out):
        return kernel(
            tuple(v[:n]), v[n], tuple(m), sc, has, wts, elect, normalize, divisor, np.float32(lam), lam != 1.0, out
        )

    return _blocked(call, base.size, (*xs, base), packed)


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
    bits = combine_bits([_bits(d) for d in deltas], subtract, _bits(base), weights, elect, normalize, lam)
    if bits is None:
        return None
    return torch.from_numpy(bits).view(torch.bfloat16).reshape(base.shape)
