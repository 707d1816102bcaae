"""The TIES combine's fast kernels give the bits of the straightforward one (mergekit's steps).

``gta._combine_sum`` takes a path of integer and 0/1-factor kernels when every weighted delta is
finite; these tests hold it to the plain formula on tensors built to hit every corner: exact
ties across models, zeros of both signs, subnormals, negative and zero weights, NaN and inf.
"""

from __future__ import annotations

import pytest
import torch

from mergefile.methods import gta
from mergefile.methods._common import factor
from mergefile.methods.sparsify import Keep

DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)
_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _plain(weighted: torch.Tensor, weights: torch.Tensor, normalize: bool) -> torch.Tensor:
    """mergekit 0.1.5's TIES steps, written out."""
    one = torch.ones((), dtype=weighted.dtype)
    majority = torch.where(weighted.sum(dim=0) >= 0, one, -one)
    mask = (torch.sign(weighted) == majority).to(weighted.dtype)
    mixed = (weighted * mask).sum(dim=0)
    if normalize:
        divisor = (weights * mask).sum(dim=0)
        mixed = mixed / torch.where(divisor == 0, torch.ones_like(divisor), divisor)
    return mixed


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(_INT[t.element_size()])


def _corner_stack(n_models: int, shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = 10.0 ** torch.randint(-8, 3, (n_models, *shape), generator=g).double()
    w = (torch.randn((n_models, *shape), generator=g, dtype=torch.float64) * scale).to(dtype)
    w[torch.rand(w.shape, generator=g) < 0.3] = 0.0
    w[torch.rand(w.shape, generator=g) < 0.1] = -0.0
    flat = w.view(n_models, -1)
    flat[:, : flat.shape[1] // 4] = flat[:1, : flat.shape[1] // 4]  # the same value in every model
    flat[:, -1] = torch.finfo(dtype).tiny / 4  # subnormal
    return w


@pytest.mark.parametrize("dtype", DTYPES)
# sizes below, at and across the kernels' 512-entry blocks (a padded tail, none, both)
@pytest.mark.parametrize(
    "n_models,shape", [(1, (7,)), (2, (33,)), (3, (16, 24)), (5, (4, 5, 6)), (2, (1024,)), (3, (40, 41))]
)
@pytest.mark.parametrize("normalize", [True, False])
def test_finite_path_equals_the_plain_steps(dtype, n_models, shape, normalize):
    weighted = _corner_stack(n_models, shape, dtype, seed=n_models * 7 + len(shape))
    weights = torch.tensor([0.5, -0.3, 0.0, 1.0, 0.25][:n_models], dtype=dtype).view(-1, *[1] * len(shape))
    expected = _plain(weighted.clone(), weights, normalize)
    got = gta._combine_sum(weighted.clone(), weights, normalize)
    assert torch.equal(_bits(got), _bits(expected))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_entries_take_the_plain_steps(dtype, bad):
    weighted = _corner_stack(3, (50,), dtype, seed=5)
    weighted[1, 10] = bad
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=dtype).view(-1, 1)
    got = gta._combine_sum(weighted.clone(), weights, True)
    expected = _plain(weighted.clone(), weights, True)
    assert torch.equal(got.isnan(), expected.isnan())
    assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(expected))


def test_hand_built_election():
    # entry 0: +2 vs -1 -> + wins, only model 0 counts; entry 1: a tie (sum 0) goes to +;
    # entry 2: every delta zero -> divisor guard, result 0
    weighted = torch.tensor([[2.0, 1.0, 0.0], [-1.0, -1.0, -0.0]])
    weights = torch.tensor([[1.0], [1.0]])
    assert gta._combine_sum(weighted.clone(), weights, True).tolist() == [2.0, 1.0, 0.0]
    assert gta._combine_sum(weighted.clone(), weights, False).tolist() == [2.0, 1.0, 0.0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_factor_is_the_bool_cast_and_keep_applies_it_like_a_bool_product(dtype):
    mask = torch.rand(1000, generator=torch.Generator().manual_seed(2)) < 0.5
    assert torch.equal(_bits(factor(mask, dtype)), _bits(mask.to(dtype)))
    x = torch.randn(1000, dtype=torch.float64).to(dtype)
    x[:4] = torch.tensor([float("nan"), float("inf"), -0.0, -1.0], dtype=dtype)
    mask[:4] = False
    got, expected = Keep(mask).apply(x), x * mask
    assert torch.equal(got.isnan(), expected.isnan())
    assert torch.equal(_bits(torch.nan_to_num(got)), _bits(torch.nan_to_num(expected)))
