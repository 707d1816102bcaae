"""model_stock (reference §1.5)."""

from __future__ import annotations

import math

import pytest
import torch

from mergefile.errors import ConfigError

from .helpers import run, t


def test_identical_finetunes_return_them():
    g = torch.Generator().manual_seed(0)
    base, x = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    assert torch.allclose(run("model_stock", [base, x, x.clone()], base_index=0), x, atol=1e-6)


def test_by_hand():
    # offsets [1,1] and [1,0]: cos = 1/sqrt2, N = 2: t = 2c/(1+c); average [1, 0.5]
    c = 1 / math.sqrt(2)
    r = 2 * c / (1 + c)
    out = run("model_stock", [t(0, 0), t(1, 1), t(1, 0)], base_index=0)
    assert torch.allclose(out, t(r, r / 2))


def test_orthogonal_offsets_stay_at_base():
    out = run("model_stock", [t(1, 1), t(2, 1), t(1, 2)], base_index=0)
    assert torch.allclose(out, t(1, 1))


def test_filter_wise_one_ratio_per_row():
    base = torch.zeros(2, 2)
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    # row 0 orthogonal (t=0, stays 0), row 1 identical (t=1, takes [1,1])
    out = run("model_stock", [base, a, b], params={"filter_wise": True}, base_index=0)
    assert torch.allclose(out, torch.tensor([[0.0, 0.0], [1.0, 1.0]]))


def test_filter_wise_bias_is_one_row():
    out = run("model_stock", [t(0, 0), t(1, 1), t(1, 1)], params={"filter_wise": True}, base_index=0)
    assert torch.allclose(out, t(1, 1))


def test_needs_two_finetunes():
    with pytest.raises(ConfigError, match="at least two"):
        run("model_stock", [t(0, 0), t(1, 1)], base_index=0)


def test_only_base_returns_base():
    x = t(1, 2)
    assert run("model_stock", [x], base_index=0) is x
