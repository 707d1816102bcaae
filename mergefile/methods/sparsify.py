"""Sparsifiers for task vectors (TIES, DARE, Breadcrumbs, DELLA), dispatched by an enum.

Each takes a delta and :class:`SparsifyOptions` and returns a delta of the same shape and dtype.
Randomness comes only from the options' generator (drawn on CPU, so CPU and CUDA agree).
Differences from mergekit (see docs/methods.md): a positive density always keeps at least one
entry, breadcrumbs with ``gamma*n < 1`` drops no top outliers instead of zeroing the tensor,
DELLA on length-1 rows uses the plain density instead of NaN, and rescale norms are float32.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from mergefile._lazy import torch

from mergefile.errors import ConfigError
from mergefile.methods._common import draw_uniform, up, work_dtype

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


def rescale_masked(x: torch.Tensor, mask: torch.Tensor, rescale: bool) -> torch.Tensor:
    """``x * mask``; with ``rescale``, scaled so its L1 norm matches ``x``'s.

    Norms are summed in float32 (fp16 sums overflow to inf, mergekit PR #704). Skipped when
    either norm is below 1e-7, as in mergekit.
    """
    masked = x * mask.to(x.dtype)
    if not rescale:
        return masked
    before = up(x).abs().sum()
    after = up(masked).abs().sum()
    if before < _NORM_EPS or after < _NORM_EPS:
        return masked
    return (up(masked) * (before / after)).to(x.dtype)


def keep_count(density: float, n: int) -> int:
    """How many of ``n`` entries a density keeps: ``int(density*n)``, but at least 1 if density > 0.

    mergekit asserts (magnitude) or zeroes the tensor (breadcrumbs) when ``density*n < 1``;
    a positive density asks to keep the most important entries, so we keep the top one.
    """
    if density <= 0 or n == 0:
        return 0
    return min(n, max(1, int(density * n)))


def _order_by_magnitude(x: torch.Tensor, descending: bool) -> torch.Tensor:
    """Flat indices sorted by |x|; stable, so ties break by position on every device."""
    return torch.sort(up(x).abs().reshape(-1), descending=descending, stable=True).indices


def _mask_from_indices(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(x.numel(), dtype=torch.bool, device=x.device)
    mask[indices] = True
    return mask.view(x.shape)


def magnitude(x: torch.Tensor, opts: SparsifyOptions) -> torch.Tensor:
    """TIES trim: keep the ``density`` fraction of entries with the largest |x| (whole tensor)."""
    if opts.density >= 1:
        return x
    k = keep_count(opts.density, x.numel())
    if k == 0:
        return torch.zeros_like(x)
    mask = _mask_from_indices(x, _order_by_magnitude(x, descending=True)[:k])
    return rescale_masked(x, mask, opts.rescale)


def magnitude_outliers(x: torch.Tensor, opts: SparsifyOptions) -> torch.Tensor:
    """Breadcrumbs: drop the ``gamma`` fraction of largest |x|, then the smallest, keeping ``density``."""
    if opts.density >= 1:
        return x
    n = x.numel()
    target = keep_count(opts.density, n)
    if target == 0:
        return torch.zeros_like(x)
    n_top = max(0, int(opts.gamma * n))
    n_bot = n - target - n_top
    if n_bot < 0:  # not enough room: remove fewer outliers so the target density is met
        n_top += n_bot
        n_bot = 0
    # explicit end index: mergekit's ``[n_bot:-n_top]`` is empty when n_top == 0
    keep = _order_by_magnitude(x, descending=False)[n_bot : n - n_top]
    return rescale_masked(x, _mask_from_indices(x, keep), opts.rescale)


def bernoulli(x: torch.Tensor, opts: SparsifyOptions) -> torch.Tensor:
    """DARE: keep each entry independently with probability ``density``."""
    if opts.density >= 1:
        return x
    mask = draw_uniform(x.shape, opts.generator, x.device) < opts.density
    return rescale_masked(x, mask, opts.rescale)


def della_magprune(x: torch.Tensor, opts: SparsifyOptions) -> torch.Tensor:
    """DELLA MagPrune: per row, keep-probability rises linearly with magnitude rank.

    The smallest entry of a row is kept with probability ``density - epsilon``, the largest
    with ``density + epsilon``. 1-D tensors are one row; a row of length 1 uses ``density``.
    """
    d, eps = opts.density, opts.epsilon
    if d >= 1:
        return x
    if d <= 0:
        return torch.zeros_like(x)
    if not (d - eps > 0 and d + eps < 1):
        raise ConfigError(
            f"della: density ± epsilon must lie in (0, 1), got density={d}, epsilon={eps}",
            hint="lower epsilon or move density away from 0 and 1",
        )
    rows = x if x.dim() >= 2 else x.reshape(1, -1)
    n = rows.shape[1]
    ranks = rows.abs().argsort(dim=1, stable=True).argsort(dim=1).to(work_dtype(x.dtype))
    rank_norm = ranks / (n - 1) if n > 1 else torch.full_like(ranks, 0.5)
    probs = (d - eps) + 2 * eps * rank_norm
    mask = draw_uniform(rows.shape, opts.generator, x.device) < probs.float()
    return rescale_masked(rows, mask, opts.rescale).reshape(x.shape)


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
    return SPARSIFIERS[kind](x, opts)
