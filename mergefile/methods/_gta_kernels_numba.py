"""The numba kernels of ``_gta_kernels`` (imported only when first used: numba is heavy).

At module level so that numba caches their machine code on disk (``cache=True``: next to this
file, or in the user's cache folder where that is read-only): a build compiles them once per
number of models, not per process. Each kernel is compiled when first called with that many
models (1.2-2 s each on 2 cores), not all at import: compiling every count a build might use
(:func:`compile_ahead`) took 11.6 s, which a machine's first TIES or task_arithmetic build
waited for, although it calls one or two of them. Import primes numba with one kernel of fixed
types (:func:`_prime`): a process's first call of any kernel, cached or not, costs ~0.3 s of
numba starting, after which a cached kernel loads in 5-50 ms.

Every loop runs over whole blocks of :data:`BLOCK` entries, so its trip count is a constant and
LLVM vectorizes it: the kernels take arrays whose size is a multiple of ``BLOCK``
(``_gta_kernels._blocked`` runs a zero-padded copy of the tail). With a trip count of
``min(BLOCK, n - s0)`` the TIES merge from masks ran 1.8x slower on 2.9M entries.
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


BLOCK = 512  # entries per block: a multiple of 8, so a block starts on a mask byte


@njit(inline="always")
def _lane_table():
    """For each mask byte, its 8 entries' AND masks: keep all bits, or only the sign (d * 0.0
    keeps d's sign, as torch's mask product does). Mask bits are packed big-endian."""
    lut = np.empty(256 * 8, np.uint16)
    for b in range(256):
        for t in range(8):
            lut[8 * b + t] = np.uint16(0x8000) | np.uint16(((b >> (7 - t)) & 1) * 0x7FFF)
    return lut


@njit(inline="always")
def _lanes(packed, b0, lut, lane):
    """The AND masks of the block whose mask bytes start at ``packed[b0]``, into ``lane``."""
    for j in range(BLOCK // 8):
        q = 8 * np.intp(packed[b0 + j])
        for t in range(8):
            lane[8 * j + t] = lut[q + t]


@njit
def masked_delta(x, base, packed, scale, has_scale, out):
    """out = bf16(x - base) * mask [* scale]: ``Keep.apply`` of the delta, mask packed big-endian."""
    bad = 0
    sc = widen(scale)
    lut, lane = _lane_table(), np.empty(BLOCK, np.uint16)
    for s0 in range(0, x.size, BLOCK):
        _lanes(packed, s0 // 8, lut, lane)
        for k in range(BLOCK):
            d = narrow(widen(x[s0 + k]) - widen(base[s0 + k]))
            bad |= not finite(d)  # a NaN the mask drops is still NaN for torch (NaN * 0)
            d &= lane[k]
            if has_scale:
                d = narrow(widen(d) * sc)
                bad |= not finite(d)
            out[s0 + k] = d
    return bad == 0


@njit(inline="always")
def _finish_block(w, acc, div, neg, n_models, s0, wts, elect, normalize, divisor, lam, has_lam, base, out):
    """One block of ``combine`` after the weighted task vectors ``w`` and their sum ``acc``:
    sign election, masked sums, divisor, lambda, base +. Returns whether all was finite."""
    bad = 0
    zero = np.float32(0.0)
    for k in range(BLOCK):
        t = narrow(acc[k])
        bad |= not finite(t)
        acc[k] = widen(t)
    if elect:
        for k in range(BLOCK):
            neg[k] = np.float32(acc[k] < zero)
            acc[k] = zero
            div[k] = zero
        for i in range(n_models):
            wt = wts[i]
            for k in range(BLOCK):
                v = w[i, k]
                agree = np.float32((v != zero) & (np.float32(v < zero) == neg[k]))
                acc[k] += v * agree  # v * 0.0 is a zero with v's sign, as the mask product
                div[k] += wt * agree
        for k in range(BLOCK):
            mixed = narrow(acc[k])
            if normalize:
                dv = widen(narrow(div[k]))
                dv = dv + np.float32(dv == zero)
                mixed = narrow(widen(mixed) / dv)
            acc[k] = widen(mixed)
    elif normalize:
        for k in range(BLOCK):
            acc[k] = widen(narrow(acc[k] / divisor))
    for k in range(BLOCK):
        mixed = acc[k]
        if has_lam:
            mixed = widen(narrow(mixed * lam))
        r = narrow(widen(base[s0 + k]) + mixed)
        bad |= not finite(r)
        out[s0 + k] = r
    return bad


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
    n_models = len(ds)
    w, acc, div, neg = _scratch(n_models)
    bad = 0
    for s0 in range(0, base.size, BLOCK):
        acc[:] = 0.0  # 0.0 + -0.0 is 0.0, as torch's sum starts
        for i in range(n_models):
            d_i, wt = ds[i], wts[i]
            for k in range(BLOCK):
                d = d_i[s0 + k]
                if subtract:
                    d = narrow(widen(d) - widen(base[s0 + k]))
                v = widen(narrow(widen(d) * wt))
                w[i, k] = v
                acc[k] += v
        bad |= _finish_block(w, acc, div, neg, n_models, s0, wts, elect, normalize, divisor, lam, has_lam, base, out)
    return bad == 0


@njit
def combine_masked(xs, base, masks, scales, has_scale, wts, elect, normalize, divisor, lam, has_lam, out):
    """``masked_delta`` of every model and ``combine`` in one pass: the task vectors are never
    stored, so a weight edit from cached masks streams each input once. Same roundings as the
    two kernels in sequence, hence the same bits.

    ``xs`` the models' bf16 bits, ``masks`` their packed keep-masks, ``scales`` their bf16 L1
    rescale factors' bits where ``has_scale``.
    """
    n_models = len(xs)
    w, acc, div, neg = _scratch(n_models)
    lut, lane = _lane_table(), np.empty(BLOCK, np.uint16)
    bad = 0
    for s0 in range(0, base.size, BLOCK):
        acc[:] = 0.0  # 0.0 + -0.0 is 0.0, as torch's sum starts
        for i in range(n_models):
            x_i, wt = xs[i], wts[i]
            _lanes(masks[i], s0 // 8, lut, lane)
            sc = widen(scales[i])
            if has_scale[i]:
                for k in range(BLOCK):
                    d = narrow(widen(x_i[s0 + k]) - widen(base[s0 + k]))
                    bad |= not finite(d)  # a NaN the mask drops is still NaN for torch (NaN * 0)
                    d = narrow(widen(d & lane[k]) * sc)
                    bad |= not finite(d)
                    v = widen(narrow(widen(d) * wt))
                    w[i, k] = v
                    acc[k] += v
            else:
                for k in range(BLOCK):
                    d = narrow(widen(x_i[s0 + k]) - widen(base[s0 + k]))
                    bad |= not finite(d)
                    v = widen(narrow(widen(d & lane[k]) * wt))
                    w[i, k] = v
                    acc[k] += v
        bad |= _finish_block(w, acc, div, neg, n_models, s0, wts, elect, normalize, divisor, lam, has_lam, base, out)
    return bad == 0


def compile_ahead() -> None:
    """Load (or, the first time on a machine, compile) the kernels for 1-3 models now.

    ``scripts/setup`` calls it once, as pip byte-compiles sources: a checkout's first builds then
    compile nothing. A build does not: it imports this module in the background
    (``Method.warm``) and each kernel compiles, or loads from numba's cache, at its first call.
    """
    _prime()
    x = np.zeros(BLOCK, np.uint16)
    one = np.float32(1.0)
    for n in (1, 2, 3):
        for subtract in (False, True):
            combine((x,) * n, subtract, x, np.ones(n, np.float32), True, True, one, one, False, x.copy())
        masks, scales = (np.zeros(BLOCK // 8, np.uint8),) * n, np.zeros(n, np.uint16)
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


def _prime() -> None:
    """Call ``masked_delta`` once. A build imports this module in the background
    (``Method.warm``) and the build server before it forks, so the ~0.3 s that numba takes on a
    process's first call is spent there, not in the first job. On a machine that never compiled
    it, this compiles that one kernel."""
    x = np.zeros(BLOCK, np.uint16)
    masked_delta(x, x, np.zeros(BLOCK // 8, np.uint8), np.uint16(0), False, x.copy())


_prime()
