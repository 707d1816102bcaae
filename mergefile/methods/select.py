"""Rank selection in O(n): the entries a stable sort would put first, without sorting.

TIES trim, breadcrumbs and SCE keep the entries at given positions of a *stable* sort of a
tensor (ties broken by position, so every device keeps the same entries). A full sort is
O(n log n) and allocates values plus int64 indices; these functions find the cut value (a
histogram of the 32768 bit patterns for half types, ``torch.kthvalue`` otherwise),
keep everything strictly past it, and of the entries equal to it the first ones by position:
exactly the stable sort's choice, in one pass plus the entries tied at the cut.

Values must not be NaN (callers pass magnitudes or variances of finite tensors).
"""

from __future__ import annotations

from mergefile._lazy import torch

_HALF = ("float16", "bfloat16")


def _is_half(v: torch.Tensor) -> bool:
    return str(v.dtype).removeprefix("torch.") in _HALF


def kth_smallest(v: torch.Tensor, r: int) -> torch.Tensor:
    """The ``r``-th smallest (1-based) entry of the flat tensor ``v``, as a 0-dim tensor.

    For half-precision values with the sign bit clear the bit pattern, read as an int16, orders
    like the value, so a bincount over the 32768 patterns finds it (about 4x faster than
    kthvalue on 16 M entries here).
    """
    if _is_half(v) and not bool(torch.signbit(v).any()):
        counts = torch.bincount(v.view(torch.int16), minlength=1 << 15)
        pattern = int(torch.searchsorted(counts.cumsum(0), r))
        return torch.tensor(pattern, dtype=torch.int16).view(v.dtype).to(v.device)
    return torch.kthvalue(v.float() if _is_half(v) else v, r).values.to(v.dtype)


def _first_equal(eq: torch.Tensor, need: int) -> torch.Tensor:
    """``eq`` with only its first ``need`` True entries (by position) left True (in place)."""
    at = eq.nonzero().squeeze(1)
    if need < at.numel():
        eq[at[need:]] = False
    return eq


def stable_bottom(v: torch.Tensor, r: int) -> torch.Tensor:
    """Bool mask of the first ``r`` entries of ``torch.sort(v, stable=True)`` (flat ``v``)."""
    n = v.numel()
    if r <= 0:
        return torch.zeros(n, dtype=torch.bool, device=v.device)
    if r >= n:
        return torch.ones(n, dtype=torch.bool, device=v.device)
    cut = kth_smallest(v, r)
    less = v < cut
    return less.logical_or_(_first_equal(v == cut, r - int(less.sum())))


def stable_top(v: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the first ``k`` entries of ``torch.sort(v, descending=True, stable=True)``."""
    n = v.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=v.device)
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=v.device)
    cut = kth_smallest(v, n - k + 1)
    greater = v > cut
    return greater.logical_or_(_first_equal(v == cut, k - int(greater.sum())))


def stable_range(v: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Bool mask of positions ``lo:hi`` of ``torch.sort(v, stable=True)`` (ascending)."""
    keep = stable_bottom(v, hi)
    if lo > 0:
        keep &= ~stable_bottom(v, lo)
    return keep


def stable_ranks(rows: torch.Tensor) -> torch.Tensor:
    """Per row (last dim), each entry's position in a stable ascending sort of the row.

    One sort and a scatter instead of mergekit's argsort of an argsort (two sorts).
    """
    order = rows.argsort(dim=-1, stable=True)
    ranks = torch.empty_like(order)
    pos = torch.arange(rows.shape[-1], device=rows.device).expand_as(order)
    return ranks.scatter_(-1, order, pos)
