"""Sparsifiers for task vectors (TIES, DARE, Breadcrumbs, DELLA), dispatched by an enum.

Each sparsifier *selects*: it returns a :class:`Keep` (a boolean keep-mask and an optional L1
rescale factor), and ``Keep.apply(delta)`` gives the sparsified delta of the same shape and
dtype. The split is what the stage cache stores (docs/cache.md): a packed mask of one bit per
entry and the factor, not a dense delta, so a weight edit re-applies it to ``x - base`` without
selecting again, bit for bit as the first build did.

Arithmetic is mergekit 0.1.5's: in the delta's dtype (bf16 deltas are masked and rescaled in
bf16), except that random sparsifiers rescale float16 in float32 as mergekit does on CPU.
Selection keeps the entries a stable sort puts first (``methods/select.py``, O(n)); randomness
comes only from the options' generator (drawn on CPU, so CPU and CUDA agree). Differences from
mergekit (see docs/methods.md): a positive density always keeps at least one entry, exact ties
at the cut are broken by position, DELLA on length-1 rows uses the plain density instead of NaN,
and an L1 norm that overflows float16 is recomputed in float32.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from mergefile._lazy import torch
from mergefile.errors import ConfigError
from mergefile.methods._common import draw_uniform, factor
from mergefile.methods.select import stable_range, stable_ranks, stable_top

_NORM_EPS = 1e-7  # below this an L1 norm counts as zero and rescaling is skipped (as mergekit)


class Sparsifier(str, enum.Enum):
    """The sparsification a task-arithmetic row applies to each task vector."""

    MAGNITUDE = "magnitude"
    RANDOM = "random"
    MAGNITUDE_OUTLIERS = "magnitude_outliers"
    DELLA_MAGPRUNE = "della_magprune"


@dataclass(frozen=True)
class SparsifyOptions:
    """Everything a sparsifier may read. ``gamma``/``epsilon`` only matter to their methods."""

    density: float
    rescale: bool = False
    gamma: float = 0.01
    epsilon: float = 0.15
    generator: torch.Generator | None = None


@dataclass(frozen=True)
class Keep:
    """What a sparsifier keeps of a delta: ``mask`` (bool, the delta's shape; None = all) and
    ``scale`` (0-dim L1 rescale factor; None = none). ``scale`` in the delta's dtype means
    "multiply in that dtype"; a float32 scale for a half delta means "multiply in float32"."""

    mask: torch.Tensor | None = None
    scale: torch.Tensor | None = None

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The sparsified delta: ``x * mask`` (times ``scale``), as mergekit computes it."""
        if self.mask is None and self.scale is None:
            return x
        masked = x * factor(self.mask, x.dtype) if self.mask is not None else x
        if self.scale is None:
            return masked
        if self.scale.dtype == x.dtype:
            return masked * self.scale
        return (masked.to(self.scale.dtype) * self.scale).to(x.dtype)

    def pack(self) -> torch.Tensor | None:
        """A 1-D uint8 tensor: the mask at one bit per entry, the scale's bytes, a code byte
        (0: no scale, 1: in the delta's dtype, 2: float32). None when everything is kept."""
        if self.mask is None:
            return None
        import numpy as np

        bits = np.packbits(self.mask.detach().to("cpu").reshape(-1).numpy())
        if self.scale is None:
            tail, code = b"", 0
        else:
            sc = self.scale.detach().to("cpu").reshape(1)
            tail, code = sc.view(torch.uint8).numpy().tobytes(), 2 if sc.dtype == torch.float32 else 1
        extra = np.frombuffer(tail + bytes([code]), dtype=np.uint8)
        return torch.from_numpy(np.concatenate([bits, extra]))

    @staticmethod
    def unpack(packed: torch.Tensor, like: torch.Tensor) -> Keep:
        """The :class:`Keep` that :meth:`pack` wrote for a delta shaped and typed as ``like``."""
        import numpy as np

        raw = packed.detach().to("cpu").numpy()
        n = like.numel()
        mask = torch.from_numpy(np.unpackbits(raw[: (n + 7) // 8], count=n).view(np.bool_))
        return Keep(mask.reshape(like.shape).to(like.device), Keep.packed_scale(packed, like))

    @staticmethod
    def packed_scale(packed: torch.Tensor, like: torch.Tensor) -> torch.Tensor | None:
        """The scale that :meth:`pack` wrote after the mask bits (None: no scale)."""
        raw = packed.detach().to("cpu").numpy()
        nbits, code = (like.numel() + 7) // 8, int(raw[-1])
        if not code:
            return None
        dtype = torch.float32 if code == 2 and like.dtype != torch.float32 else like.dtype
        size = torch.empty((), dtype=dtype).element_size()
        scale = torch.from_numpy(raw[nbits : nbits + size].copy()).view(dtype).reshape(())
        return scale.to(like.device)


def _l1_scale(x: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """mergekit's L1 rescale factor ``|x|_1 / |x*mask|_1`` in ``dtype`` (None below 1e-7).

    A float16 sum that overflows to inf (mergekit PR #704) is redone in float32 instead.
    """
    xs = x.to(dtype)
    before = xs.abs().sum()
    after = (xs * factor(mask, xs.dtype)).abs().sum()
    if not (torch.isfinite(before) and torch.isfinite(after)) and dtype != torch.float32:
        return _l1_scale(x, mask, torch.float32)
    if before < _NORM_EPS or after < _NORM_EPS:
        return None
    return before / after


def _random_dtype(x: torch.Tensor) -> torch.dtype:
    """mergekit's dtype for DARE/DELLA rescaling: float16 on CPU goes through float32."""
    return torch.float32 if x.dtype == torch.float16 and x.device.type == "cpu" else x.dtype


def _keep(x: torch.Tensor, mask: torch.Tensor, rescale: bool, dtype: torch.dtype | None = None) -> Keep:
    return Keep(mask, _l1_scale(x, mask, dtype or x.dtype) if rescale else None)


def rescale_masked(x: torch.Tensor, mask: torch.Tensor, rescale: bool) -> torch.Tensor:
    """``x * mask``; with ``rescale``, scaled so its L1 norm matches ``x``'s (skipped below 1e-7)."""
    return _keep(x, mask, rescale).apply(x)


def keep_count(density: float, n: int) -> int:
    """How many of ``n`` entries a density keeps: ``int(density*n)``, but at least 1 if density > 0.

    mergekit 0.1.5 does so for TIES, but zeroes the tensor for breadcrumbs and SCE when
    ``density*n < 1``; a positive density asks to keep the most important entries.
    """
    if density <= 0 or n == 0:
        return 0
    return min(n, max(1, int(density * n)))


def _none(x: torch.Tensor) -> Keep:
    return Keep(torch.zeros(x.shape, dtype=torch.bool, device=x.device))


def select_magnitude(x: torch.Tensor, opts: SparsifyOptions) -> Keep:
    """TIES trim: keep the ``density`` fraction of entries with the largest |x| (whole tensor)."""
    if opts.density >= 1:
        return Keep()
    k = keep_count(opts.density, x.numel())
    if k == 0:
        return _none(x)
    return _keep(x, stable_top(x.abs().reshape(-1), k).view(x.shape), opts.rescale)


def select_magnitude_outliers(x: torch.Tensor, opts: SparsifyOptions) -> Keep:
    """Breadcrumbs: drop the ``gamma`` fraction of largest |x|, then the smallest, keeping ``density``."""
    if opts.density >= 1:
        return Keep()
    n = x.numel()
    target = keep_count(opts.density, n)
    if target == 0:
        return _none(x)
    n_top = max(0, int(opts.gamma * n))
    n_bot = max(0, n - target - n_top)  # not enough room: remove fewer top outliers
    keep = stable_range(x.abs().reshape(-1), n_bot, n_bot + target)
    return _keep(x, keep.view(x.shape), opts.rescale)


def select_bernoulli(x: torch.Tensor, opts: SparsifyOptions) -> Keep:
    """DARE: keep each entry independently with probability ``density``."""
    if opts.density >= 1:
        return Keep()
    mask = draw_uniform(x.shape, opts.generator, x.device) < opts.density
    return _keep(x, mask, opts.rescale, _random_dtype(x))


def select_della(x: torch.Tensor, opts: SparsifyOptions) -> Keep:
    """DELLA MagPrune: per row, keep-probability rises linearly with magnitude rank.

    The smallest entry of a row is kept with probability ``density - epsilon``, the largest
    with ``density + epsilon``. 1-D tensors are one row; a row of length 1 uses ``density``.
    Probabilities are float32 (mergekit rounds ranks to bf16; its masks are random anyway).
    """
    d, eps = opts.density, opts.epsilon
    if d >= 1:
        return Keep()
    if d <= 0:
        return _none(x)
    if not (d - eps > 0 and d + eps < 1):
        raise ConfigError(
            f"della: density ± epsilon must lie in (0, 1), got density={d}, epsilon={eps}",
            hint="lower epsilon or move density away from 0 and 1",
        )
    rows = x if x.dim() >= 2 else x.reshape(1, -1)
    n = rows.shape[1]
    ranks = stable_ranks(rows.abs(), torch.float32)
    # in place, the same operations: rank_norm = ranks / (n-1); probs = (d-eps) + 2*eps*rank_norm
    rank_norm = ranks.div_(n - 1) if n > 1 else ranks.fill_(0.5)
    probs = rank_norm.mul_(2 * eps).add_(d - eps)
    mask = (draw_uniform(rows.shape, opts.generator, x.device) < probs).reshape(x.shape)
    del probs, rank_norm, ranks
    return _keep(x, mask, opts.rescale, _random_dtype(x))


SelectFn = Callable[["torch.Tensor", SparsifyOptions], Keep]

SELECTORS: dict[Sparsifier, SelectFn] = {
    Sparsifier.MAGNITUDE: select_magnitude,
    Sparsifier.RANDOM: select_bernoulli,
    Sparsifier.MAGNITUDE_OUTLIERS: select_magnitude_outliers,
    Sparsifier.DELLA_MAGPRUNE: select_della,
}


def _dense(select: SelectFn) -> Callable[[torch.Tensor, SparsifyOptions], torch.Tensor]:
    def run(x: torch.Tensor, opts: SparsifyOptions) -> torch.Tensor:
        return select(x, opts).apply(x)

    run.__name__ = select.__name__.removeprefix("select_")
    run.__doc__ = select.__doc__
    return run


magnitude = _dense(select_magnitude)
magnitude_outliers = _dense(select_magnitude_outliers)
bernoulli = _dense(select_bernoulli)
della_magprune = _dense(select_della)

SparsifyFn = Callable[["torch.Tensor", SparsifyOptions], "torch.Tensor"]

SPARSIFIERS: dict[Sparsifier, SparsifyFn] = {
    Sparsifier.MAGNITUDE: magnitude,
    Sparsifier.RANDOM: bernoulli,
    Sparsifier.MAGNITUDE_OUTLIERS: magnitude_outliers,
    Sparsifier.DELLA_MAGPRUNE: della_magprune,
}

RANDOM_SPARSIFIERS = frozenset({Sparsifier.RANDOM, Sparsifier.DELLA_MAGPRUNE})


def sparsify(x: torch.Tensor, kind: Sparsifier, opts: SparsifyOptions) -> torch.Tensor:
    """Apply the sparsifier ``kind`` to ``x``."""
    return SELECTORS[kind](x, opts).apply(x)


def select(x: torch.Tensor, kind: Sparsifier, opts: SparsifyOptions) -> Keep:
    """What the sparsifier ``kind`` keeps of ``x``."""
    return SELECTORS[kind](x, opts)
