"""Regression tests for each deliberate difference from mergekit (reference §14, docs/methods.md)."""

from __future__ import annotations

import math

import pytest
import torch

from mergefile.errors import ConfigError
from mergefile.methods.sparsify import SparsifyOptions, bernoulli, della_magprune, magnitude

from .helpers import run, t


def test_breadcrumbs_small_gamma_does_not_zero_the_tensor():
    """mergekit: 50 entries, density 0.9, gamma 0.01 -> n_top 0 -> slice [5:-0] empty -> all zero."""
    x = torch.arange(1, 51, dtype=torch.float32)
    out = run("breadcrumbs", [torch.zeros(50), x], [{}, {"weight": 1, "density": 0.9, "gamma": 0.01}], base_index=0)
    assert (out != 0).sum() == 45
    assert torch.equal(out[5:], x[5:])  # the 5 smallest dropped, no top outlier dropped


def test_breadcrumbs_gamma_zero_is_plain_magnitude():
    x = torch.randn(64, generator=torch.Generator().manual_seed(0))
    pm = [{}, {"weight": 1, "density": 0.25, "gamma": 0.0}]
    assert torch.equal(
        run("breadcrumbs", [torch.zeros(64), x], pm, base_index=0),
        run("ties", [torch.zeros(64), x], [{}, {"weight": 1, "density": 0.25}], {"normalize": False}, base_index=0),
    )


def test_magnitude_tiny_density_keeps_the_largest_entry():
    """mergekit: 32-element vector at density 0.01 -> k = 0 -> AssertionError."""
    x = torch.linspace(-1, 2, 32)
    out = magnitude(x, SparsifyOptions(0.01))
    assert (out != 0).sum() == 1 and out[-1] == 2


def test_ties_on_a_norm_vector_at_low_density_runs():
    base, x = torch.ones(32), torch.ones(32) + torch.linspace(0, 1, 32)
    out = run("ties", [base, x], [{}, {"weight": 1, "density": 0.01}], base_index=0)
    assert torch.isfinite(out).all() and (out != base).sum() == 1


def test_della_length_one_rows_have_no_nan():
    """mergekit: rank normalization 0/0 -> NaN probabilities -> torch error."""
    for shape in [(1,), (300, 1)]:
        x = torch.ones(shape)
        out = della_magprune(x, SparsifyOptions(0.4, epsilon=0.1, generator=torch.Generator().manual_seed(0)))
        assert torch.isfinite(out).all()
    kept = (della_magprune(torch.ones(4000, 1), SparsifyOptions(0.4, epsilon=0.1)) != 0).float().mean()
    assert abs(kept.item() - 0.4) < 0.04  # a single entry is kept with the plain density


def test_linear_zero_weight_sum_is_a_clear_error():
    """mergekit: divides by 0 -> inf/NaN tensors written silently."""
    with pytest.raises(ConfigError, match="normalize"):
        run("linear", [t(1), t(2)], [{"weight": 0.5}, {"weight": -0.5}])


def test_linear_ignores_a_base_without_weight():
    """mergekit: auto-adds the base without a weight and crashes with TypeError."""
    out = run("linear", [t(9, 9), t(1, 3)], [{"weight": None}, {"weight": 2}], base_index=0)
    assert torch.equal(out, t(1, 3))


def test_karcher_honours_weights():
    """mergekit ignores weights (always 1/N): 3:1 would give 45 degrees; we give 22.5."""
    out = run("karcher", [t(1, 0), t(0, 1)], [{"weight": 3}, {"weight": 1}])
    assert torch.allclose(out, t(math.cos(math.pi / 8), math.sin(math.pi / 8)), atol=1e-5)
    # equal weights (or none given) are mergekit's result
    assert torch.allclose(run("karcher", [t(1, 0), t(0, 1)]), t(math.sqrt(0.5), math.sqrt(0.5)), atol=1e-5)


def test_karcher_rejects_negative_weights():
    with pytest.raises(ConfigError, match="weights"):
        run("karcher", [t(1, 0), t(0, 1)], [{"weight": 1}, {"weight": -1}])


def test_model_stock_negative_cosine_stays_at_base():
    """mergekit: cos ~ -0.995, N=2 -> t = 2c/(1+c) ~ -400: the output explodes."""
    base = t(0, 0)
    out = run("model_stock", [base, t(1, 0), t(-1, 0.1)], base_index=0)
    assert torch.allclose(out, base)


def test_model_stock_three_opposed_offsets_stay_at_base():
    # mean pairwise cos ~ -1/3, N = 3: mergekit's t = 3c/(1+2c) ~ -3; clamped cos = 0 -> t = 0
    base = t(0, 0, 0)
    a, b, c = t(1, 0, 0), t(-1, 0.05, 0), t(-1, -0.05, 0.01)
    out = run("model_stock", [base, a, b, c], base_index=0)
    assert torch.allclose(out, base)


def test_fp16_l1_rescale_does_not_overflow():
    """mergekit PR #704: the fp16 L1 sum overflows (> 65504) and the rescale gives inf/NaN."""
    x = torch.full((100_000,), 1000.0, dtype=torch.float16)  # L1 = 1e8
    out = bernoulli(x, SparsifyOptions(0.5, rescale=True, generator=torch.Generator().manual_seed(0)))
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert abs(out.float().sum().item() / 1e8 - 1) < 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dare_half_precision_end_to_end_is_finite(dtype: torch.dtype):
    base = torch.zeros(50_000, dtype=dtype)
    x = torch.full((50_000,), 30.0, dtype=dtype)
    out = run("dare_ties", [base, x], [{}, {"weight": 1, "density": 0.1}], base_index=0)
    assert torch.isfinite(out.float()).all()


def test_sce_small_select_topk_keeps_one_position():
    """mergekit: k = int(0.4 * 2) = 0 -> every task vector zeroed -> returns the base."""
    a, b = t(1, 2, -1), t(3, -2, -1)
    out = run("sce", [torch.zeros(3), a, b], params={"select_topk": 0.4}, base_index=0)
    assert torch.allclose(out, t(0, 2, 0))


def test_multislerp_zero_weight_sum_is_a_clear_error():
    with pytest.raises(ConfigError, match="sum to 0"):
        run("multislerp", [t(1, 0), t(0, 1)], [{"weight": 1}, {"weight": -1}])


def test_random_masks_do_not_depend_on_the_global_rng():
    x = torch.ones(256)
    pm = [{}, {"weight": 1, "density": 0.5}]
    torch.manual_seed(1)
    a = run("dare_linear", [torch.zeros(256), x], pm, base_index=0, seed=9)
    torch.manual_seed(2)
    b = run("dare_linear", [torch.zeros(256), x], pm, base_index=0, seed=9)
    assert torch.equal(a, b)
