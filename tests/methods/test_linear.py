"""linear and passthrough."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mergefile.errors import ConfigError

from .helpers import run, t


def test_weighted_average_by_hand():
    a, b = t(1, 2), t(3, 6)
    out = run("linear", [a, b], [{"weight": 1}, {"weight": 3}])
    assert torch.allclose(out, t(2.5, 5.0))  # (1*1 + 3*3)/4, (2 + 18)/4


def test_without_normalize_it_is_the_weighted_sum():
    out = run("linear", [t(1, 2), t(3, 6)], [{"weight": 1}, {"weight": 3}], {"normalize": False})
    assert torch.allclose(out, t(10.0, 20.0))


def test_one_model_returns_it():
    x = torch.randn(5, 7)
    assert torch.equal(run("linear", [x], [{"weight": 1.0}]), x)


@settings(max_examples=30, deadline=None)
@given(st.floats(min_value=0.01, max_value=100))
def test_one_model_any_weight_normalized_returns_it(w: float):
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(run("linear", [x], [{"weight": w}]), x, rtol=1e-6, atol=1e-6)


def test_half_precision_keeps_dtype():
    a = torch.full((3,), 1000.0, dtype=torch.float16)
    out = run("linear", [a, a], [{"weight": 60.0}, {"weight": 60.0}])  # 120 000 > fp16 max mid-way
    assert out.dtype == torch.float16 and torch.equal(out, a)


def test_zero_weight_sum_with_normalize_is_an_error():
    with pytest.raises(ConfigError, match="sum to 0"):
        run("linear", [t(1, 2), t(3, 4)], [{"weight": 1}, {"weight": -1}])


def test_zero_weight_sum_without_normalize_is_fine():
    out = run("linear", [t(1, 2), t(3, 4)], [{"weight": 1}, {"weight": -1}], {"normalize": False})
    assert torch.equal(out, t(-2, -2))


def test_unlisted_base_is_ignored():
    """mergekit crashes with TypeError when base_model is not among models; we skip it."""
    base, a, b = t(100, 100), t(1, 2), t(3, 6)
    out = run("linear", [base, a, b], [{"weight": None}, {"weight": 1}, {"weight": 3}], base_index=0)
    assert torch.allclose(out, t(2.5, 5.0))


def test_listed_base_is_one_more_input():
    base, a = t(0, 0), t(2, 4)
    out = run("linear", [base, a], [{"weight": 1}, {"weight": 1}], base_index=0)
    assert torch.allclose(out, t(1, 2))


def test_missing_weight_on_a_model_is_an_error():
    with pytest.raises(ConfigError, match="weight"):
        run("linear", [t(1), t(2)], [{"weight": 1}, {"weight": None}])


def test_passthrough_returns_the_input():
    x = torch.randn(3, 4)
    assert run("passthrough", [x]) is x


def test_passthrough_scale():
    out = run("passthrough", [t(1, -2, dtype=torch.bfloat16)], [{"scale": 0.5}])
    assert out.dtype == torch.bfloat16 and torch.equal(out, t(0.5, -1, dtype=torch.bfloat16))


def test_passthrough_takes_one_input():
    with pytest.raises(ConfigError, match="exactly one"):
        run("passthrough", [t(1), t(2)])


@settings(max_examples=25, deadline=None)
@given(st.permutations([0, 1, 2]))
def test_linear_does_not_depend_on_input_order(order: list[int]):
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(6, generator=g) for _ in range(3)]
    pm = [{"weight": w} for w in (0.2, 0.5, 1.3)]
    ref = run("linear", xs, pm)
    out = run("linear", [xs[i] for i in order], [pm[i] for i in order])
    assert torch.allclose(out, ref, atol=1e-6)
