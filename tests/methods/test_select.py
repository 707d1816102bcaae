"""O(n) rank selection equals the stable sort it replaces, on tensors full of ties."""

from __future__ import annotations

import pytest
import torch

from mergefile.methods.select import kth_smallest, stable_bottom, stable_range, stable_ranks, stable_top
from mergefile.methods.sparsify import Keep, Sparsifier, SparsifyOptions, keep_count, select

DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _sorted_mask(v: torch.Tensor, lo: int, hi: int, descending: bool = False) -> torch.Tensor:
    mask = torch.zeros(v.numel(), dtype=torch.bool)
    mask[torch.sort(v, descending=descending, stable=True).indices[lo:hi]] = True
    return mask


def _tied(n: int, levels: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """``n`` magnitudes drawn from only ``levels`` values: long runs of exact ties."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, levels, (n,), generator=g).to(torch.float64) * 0.01).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,levels", [(1, 1), (2, 1), (9, 2), (100, 3), (1000, 7), (4096, 1)])
def test_top_and_ranges_equal_the_stable_sort(dtype, n, levels):
    v = _tied(n, levels, dtype, seed=n + levels)
    for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
        assert torch.equal(stable_top(v, k), _sorted_mask(v, 0, k, descending=True)), k
        assert torch.equal(stable_bottom(v, k), _sorted_mask(v, 0, k)), k
        for lo in sorted({0, k // 2, k}):
            assert torch.equal(stable_range(v, lo, k), _sorted_mask(v, lo, k)), (lo, k)


def test_hand_built_ties_keep_the_first_by_position():
    v = torch.tensor([3.0, 1.0, 2.0, 2.0, 2.0, 0.0, 2.0])
    assert stable_top(v, 3).tolist() == [True, False, True, True, False, False, False]
    assert stable_bottom(v, 3).tolist() == [False, True, True, False, False, True, False]
    assert stable_range(v, 2, 5).tolist() == [False, False, True, True, True, False, False]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_histogram_finds_the_kth_value(dtype):
    v = torch.randn(5000, generator=torch.Generator().manual_seed(1)).abs().to(dtype)
    ref = torch.sort(v.float()).values
    for r in (1, 17, 2500, 4999, 5000):
        assert kth_smallest(v, r).item() == ref[r - 1].item()
    # signed values (the histogram needs the sign bit clear) go through kthvalue
    s = torch.tensor([-1.0, 0.5, -0.0, 2.0], dtype=dtype)
    assert kth_smallest(s, 1).item() == -1.0 and kth_smallest(s, 3).item() == 0.5


def test_stable_ranks_equal_argsort_of_argsort():
    rows = _tied(600, 4, torch.float32, seed=3).reshape(20, 30)
    assert torch.equal(stable_ranks(rows), rows.argsort(dim=1, stable=True).argsort(dim=1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_stable_ranks_equal_a_stable_argsort_on_half_magnitudes_and_special_values(dtype):
    """The 32-bit-key path (non-negative halves) and the fallback give the same ranks."""
    g = torch.Generator().manual_seed(5)
    cases = [
        _tied(3000, 5, dtype, seed=6).reshape(30, 100),  # ties: position breaks them
        (torch.randn(7, 301, generator=g) * 0.01).abs().to(dtype),
        torch.zeros(4, 9, dtype=dtype),
        (torch.randn(3, 50, generator=g)).to(dtype),  # negatives: the plain path
        (torch.randn(65, generator=g)).abs().to(dtype),
    ]
    special = (torch.randn(4, 40, generator=g)).abs().to(dtype)
    special[0, :4] = torch.tensor([float("inf"), 0.0, float("inf"), 0.0], dtype=dtype)
    special[1, 3] = float("nan")
    cases.append(special)
    cases.append(special[:1])  # infs and zeros, no NaN: the key path
    for rows in cases:
        want = rows.argsort(dim=-1, stable=True).argsort(dim=-1)
        assert torch.equal(stable_ranks(rows), want)
        got = stable_ranks(rows, torch.float32)
        assert got.dtype == torch.float32 and torch.equal(got, want.float())


def _sort_magnitude(x: torch.Tensor, density: float) -> torch.Tensor:
    """The sort-based TIES trim this code had before the O(n) selection."""
    k = keep_count(density, x.numel())
    return _sorted_mask(x.abs().reshape(-1).float(), 0, k, descending=True).view(x.shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ties_trim_equals_the_sort_based_one_on_many_equal_magnitudes(dtype):
    g = torch.Generator().manual_seed(4)
    x = (torch.randint(-3, 4, (64, 48), generator=g) * 0.125).to(dtype)  # 7 values, signed
    for d in (0.01, 0.3, 0.5, 0.9):
        keep = select(x, Sparsifier.MAGNITUDE, SparsifyOptions(d))
        assert torch.equal(keep.mask, _sort_magnitude(x, d)), d


def test_breadcrumbs_equals_the_sort_based_slice_on_ties():
    x = _tied(3000, 5, torch.bfloat16, seed=5).reshape(60, 50)
    n, target, top = x.numel(), 1500, int(0.05 * 3000)
    keep = select(x, Sparsifier.MAGNITUDE_OUTLIERS, SparsifyOptions(0.5, gamma=0.05))
    lo = n - target - top
    assert torch.equal(keep.mask.reshape(-1), _sorted_mask(x.abs().reshape(-1).float(), lo, lo + target))


@pytest.mark.parametrize("kind", list(Sparsifier))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rescale", [False, True])
def test_packed_selection_rebuilds_the_same_delta(kind, dtype, rescale):
    """What the stage cache stores (one bit per entry + the factor) gives the delta bit for bit."""
    x = torch.randn(37, 11, generator=torch.Generator().manual_seed(6)).to(dtype)
    opts = SparsifyOptions(0.4, rescale=rescale, epsilon=0.1, generator=torch.Generator().manual_seed(7))
    keep = select(x, kind, opts)
    packed = keep.pack()
    assert packed.dtype == torch.uint8 and packed.numel() <= (x.numel() + 7) // 8 + 5
    again = Keep.unpack(packed, x)
    assert torch.equal(again.mask, keep.mask)
    assert torch.equal(again.apply(x), keep.apply(x))
    assert (again.scale is None) == (keep.scale is None) == (not rescale)


def test_everything_kept_packs_to_nothing():
    assert select(torch.ones(4), Sparsifier.MAGNITUDE, SparsifyOptions(1.0)).pack() is None
