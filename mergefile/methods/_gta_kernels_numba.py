"""The numba kernels of ``_gta_kernels`` (imported only when first used: numba is heavy).

At module level so that numba caches their machine code on disk (``cache=True``: next to this
file, or in the user's cache folder where that is read-only): a build compiles them once per
number of models, not per process.
"""

import functools

import numba
import numpy as np

njit = functools.partial(numba.njit, nogil=True, cache=True, fastmath=False, error_model="numpy")


@njit(inline="always")
def widen(u):
    return np.uint32(np.uint32(u) << np.uint32(16)).view(np.float32)


@njit(inline="always")
def narrow(f):
    # c10::BFloat16's round to nearest even (NaN excluded: callers fall back on non-finite)
    u = np.float32(f).view(np.uint32)
    return np.uint16(np.uint32(u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))


@njit(inline="always")
def finite(u):
    return (u & np.uint16(0x7F80)) != np.uint16(0x7F80)


@njit
def masked_delta(x, base, packed, scale, has_scale, out):
    """out = bf16(x - base) * mask [* scale]: ``Keep.apply`` of the delta, mask packed big-endian."""
    bad = 0
    sc = widen(scale)
    n = x.size
    full = n // 8
    for j in range(full + (n % 8 > 0)):  # a byte of mask per 8 entries: the inner loop vectorizes
        byte = np.uint16(packed[j])
        for t in range(min(8, n - 8 * j)):
            k = 8 * j + t
            d = narrow(widen(x[k]) - widen(base[k]))
            bad |= not finite(d)  # a NaN the mask drops is still NaN for torch (NaN * 0)
            bit = (byte >> np.uint16(7 - t)) & np.uint16(1)
            d &= np.uint16(0x8000) | np.uint16(bit * np.uint16(0x7FFF))  # d * 0.0 keeps d's sign
            if has_scale:
                d = narrow(widen(d) * sc)
            bad |= not finite(d)
            out[k] = d
    return bad == 0


@njit(inline="always")
def _finish_block(w, acc, div, neg, n_models, m, s0, wts, elect, normalize, divisor, lam, has_lam, base, out):
    """One block of ``combine`` after the weighted task vectors ``w`` and their sum ``acc``:
    sign election, masked sums, divisor, lambda, base +. Returns whether all was finite."""
    bad = 0
    zero = np.float32(0.0)
    for k in range(m):
        t = narrow(acc[k])
        bad |= not finite(t)
        acc[k] = widen(t)
    if elect:
        for k in range(m):
            neg[k] = np.float32(acc[k] < zero)
            acc[k] = zero
            div[k] = zero
        for i in range(n_models):
            wt = wts[i]
            for k in range(m):
                v = w[i, k]
                agree = np.float32((v != zero) & (np.float32(v < zero) == neg[k]))
                acc[k] += v * agree  # v * 0.0 is a zero with v's sign, as the mask product
                div[k] += wt * agree
        for k in range(m):
            mixed = narrow(acc[k])
            if normalize:
                dv = widen(narrow(div[k]))
                dv = dv + np.float32(dv == zero)
                mixed = narrow(widen(mixed) / dv)
            acc[k] = widen(mixed)
    elif normalize:
        for k in range(m):
            acc[k] = widen(narrow(acc[k] / divisor))
    for k in range(m):
        mixed = acc[k]
        if has_lam:
            mixed = widen(narrow(mixed * lam))
        r = narrow(widen(base[s0 + k]) + mixed)
        bad |= not finite(r)
        out[s0 + k] = r
    return bad


BLOCK = 512  # entries per block: a multiple of 8, so a block starts on a mask byte


@njit(inline="always")
def _scratch(n_models):
    """A block's working rows: weighted task vectors, their sum, the divisor, the elected sign."""
    f32 = np.float32
    return np.empty((n_models, BLOCK), f32), np.empty(BLOCK, f32), np.empty(BLOCK, f32), np.empty(BLOCK, f32)


@njit
def combine(ds, subtract, base, wts, elect, normalize, divisor, lam, has_lam, out):
    """``gta._merge`` from the task vectors (or inputs, with ``subtract``) to the result.

    ``ds`` is a tuple of N flat arrays, ``wts`` the weights rounded to bf16 (as float32),
    ``divisor`` the normalizer of the plain sum, ``lam`` lambda as float32 (torch's opmath for
    a Python scalar). Branch-free blocks, so the inner loops vectorize.
    """
    n_models, n = len(ds), base.size
    blk = BLOCK
    w, acc, div, neg = _scratch(n_models)
    bad = 0
    zero = np.float32(0.0)
    for s0 in range(0, n, blk):
        m = min(blk, n - s0)
        acc[:m] = zero
        for i in range(n_models):
            d_i, wt = ds[i], wts[i]
            for k in range(m):
                d = d_i[s0 + k]
                if subtract:
                    d = narrow(widen(d) - widen(base[s0 + k]))
                v = widen(narrow(widen(d) * wt))
                w[i, k] = v
                acc[k] += v
        bad |= _finish_block(w, acc, div, neg, n_models, m, s0, wts, elect, normalize, divisor, lam, has_lam, base, out)
    return bad == 0


@njit
def combine_masked(xs, base, masks, scales, has_scale, wts, elect, normalize, divisor, lam, has_lam, out):
    """``masked_delta`` of every model and ``combine`` in one pass: the task vectors are never
    stored, so a weight edit from cached masks streams each input once (the kernels are bound by
    memory bandwidth on CPU). Same roundings as the two kernels in sequence, hence the same bits.

    ``xs`` the models' bf16 bits, ``masks`` their packed keep-masks, ``scales`` their bf16 L1
    rescale factors' bits where ``has_scale``.
    """
    n_models, n = len(xs), base.size
    blk = BLOCK
    w, acc, div, neg = _scratch(n_models)
    dt = np.empty(blk, np.uint16)
    bad = 0
    zero = np.float32(0.0)
    for s0 in range(0, n, blk):
        m = min(blk, n - s0)
        acc[:m] = zero
        for i in range(n_models):
            x_i, p_i, wt = xs[i], masks[i], wts[i]
            b0 = s0 // 8
            for j in range((m + 7) // 8):  # masked_delta's loops: a mask byte per 8 entries
                byte = np.uint16(p_i[b0 + j])
                for t in range(min(8, m - 8 * j)):
                    k = 8 * j + t
                    d = narrow(widen(x_i[s0 + k]) - widen(base[s0 + k]))
                    bad |= not finite(d)  # a NaN the mask drops is still NaN for torch (NaN * 0)
                    bit = (byte >> np.uint16(7 - t)) & np.uint16(1)
                    dt[k] = d & (np.uint16(0x8000) | np.uint16(bit * np.uint16(0x7FFF)))  # d * 0.0 keeps d's sign
            if has_scale[i]:
                sc = widen(scales[i])
                for k in range(m):
                    dt[k] = narrow(widen(dt[k]) * sc)
            for k in range(m):
                d = dt[k]
                bad |= not finite(d)
                v = widen(narrow(widen(d) * wt))
                w[i, k] = v
                acc[k] += v
        bad |= _finish_block(w, acc, div, neg, n_models, m, s0, wts, elect, normalize, divisor, lam, has_lam, base, out)
    return bad == 0


def _warm_up() -> None:
    """Load (or, the first time on a machine, compile) the kernels for 1-3 models now: a build
    imports this module in the background (``Method.warm``), so its first tensor need not wait."""
    x = np.zeros(9, np.uint16)
    masked_delta(x, x, np.zeros(2, np.uint8), np.uint16(0), False, x.copy())
    one = np.float32(1.0)
    for n in (1, 2, 3):
        for subtract in (False, True):
            combine((x,) * n, subtract, x, np.ones(n, np.float32), True, True, one, one, False, x.copy())
        masks, scales = (np.zeros(2, np.uint8),) * n, np.zeros(n, np.uint16)
        combine_masked(
            (x,) * n,
            x,
            masks,
            scales,
            np.zeros(n, np.bool_),
            np.ones(n, np.float32),
            True,
            True,
            one,
            one,
            False,
            x.copy(),
        )


_warm_up()
