"""Sparsifiers on their own (reference §1.4)."""

from __future__ import annotations

import pytest
import torch

from mergefile.errors import ConfigError
from mergefile.methods.sparsify import (
    SPARSIFIERS,
    Sparsifier,
    SparsifyOptions,
    bernoulli,
    della_magprune,
    keep_count,
    magnitude,
    magnitude_outliers,
    rescale_masked,
)

from .helpers import t


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_every_sparsifier_is_dispatched():
    assert set(SPARSIFIERS) == set(Sparsifier)


def test_magnitude_by_hand():
    assert torch.equal(magnitude(t(1, -4, 3, 2), SparsifyOptions(0.5)), t(0, -4, 3, 0))


def test_magnitude_is_global_not_per_row():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert torch.equal(magnitude(x, SparsifyOptions(0.5)), torch.tensor([[0.0, 0.0], [3.0, 4.0]]))


def test_magnitude_rescale_l1_by_hand():
    out = magnitude(t(1, 2, 3, 4), SparsifyOptions(0.5, rescale=True))
    assert torch.allclose(out, t(0, 0, 30 / 7, 40 / 7))


def test_density_one_is_identity():
    x = torch.randn(10)
    for kind in Sparsifier:
        assert SPARSIFIERS[kind](x, SparsifyOptions(1.0, generator=gen())) is x


def test_magnitude_ties_break_by_position():
    assert torch.equal(magnitude(t(1, 1, 1, 1), SparsifyOptions(0.5)), t(1, 1, 0, 0))


def test_keep_count():
    assert keep_count(0.5, 10) == 5
    assert keep_count(0.01, 32) == 1  # mergekit: assertion error
    assert keep_count(0.0, 32) == 0
    assert keep_count(0.999, 3) == 2


def test_bernoulli_mask_is_seeded():
    x = torch.ones(1000)
    a = bernoulli(x, SparsifyOptions(0.5, generator=gen(1)))
    b = bernoulli(x, SparsifyOptions(0.5, generator=gen(1)))
    c = bernoulli(x, SparsifyOptions(0.5, generator=gen(2)))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bernoulli_half_precision_mask_matches_float32():
    """The mask is drawn in float32 on CPU whatever the dtype, so dtypes pick the same entries."""
    x = torch.linspace(1, 2, 512)
    masks = {
        d: bernoulli(x.to(d), SparsifyOptions(0.4, generator=gen(3))) != 0
        for d in (torch.float32, torch.float16, torch.bfloat16)
    }
    assert torch.equal(masks[torch.float32], masks[torch.float16])
    assert torch.equal(masks[torch.float32], masks[torch.bfloat16])


def test_magnitude_outliers_by_hand():
    x = t(5, -1, 3, 10, -2, 4, 8, -7, 6, 9)
    # n=10, density 0.6 -> 6, gamma 0.2 -> drop 2 largest (10, 9), then 2 smallest (1, 2)
    out = magnitude_outliers(x, SparsifyOptions(0.6, gamma=0.2))
    assert torch.equal(out, t(5, 0, 3, 0, 0, 4, 8, -7, 6, 0))


def test_della_rejects_epsilon_out_of_range():
    with pytest.raises(ConfigError, match="epsilon"):
        della_magprune(torch.ones(4, 4), SparsifyOptions(0.9, epsilon=0.15))


def test_della_zero_density_is_zero():
    assert torch.equal(della_magprune(torch.ones(3, 3), SparsifyOptions(0.0)), torch.zeros(3, 3))


def test_della_epsilon_zero_is_dare():
    x = torch.randn(50, 50, generator=gen(4))
    a = della_magprune(x, SparsifyOptions(0.5, epsilon=0.0, generator=gen(5)))
    b = bernoulli(x, SparsifyOptions(0.5, generator=gen(5)))
    assert torch.equal(a, b)


def test_rescale_skips_vanishing_norms():
    x = t(1e-9, 1e-9)
    assert torch.equal(rescale_masked(x, torch.tensor([True, False]), True), t(1e-9, 0))
