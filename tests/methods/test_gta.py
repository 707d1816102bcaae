"""The task-arithmetic family: task_arithmetic, TIES, DARE, breadcrumbs, DELLA (reference §1.3)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mergefile.methods import METHODS

from .helpers import run, t


def test_task_arithmetic_by_hand():
    base, a, b = t(1, 1, 1), t(2, 0, 1), t(1, 3, 1)  # deltas [1,-1,0] and [0,2,0]
    pm = [{}, {"weight": 0.5}, {"weight": 1.0}]
    assert torch.allclose(run("task_arithmetic", [base, a, b], pm, base_index=0), t(1.5, 2.5, 1))
    assert torch.allclose(run("task_arithmetic", [base, a, b], pm, {"lambda": 2.0}, base_index=0), t(2, 4, 1))
    normalized = run("task_arithmetic", [base, a, b], pm, {"normalize": True}, base_index=0)
    assert torch.allclose(normalized, t(1 + 0.5 / 1.5, 2, 1))


def test_task_arithmetic_one_model_lambda_one_is_base_plus_delta():
    g = torch.Generator().manual_seed(3)
    base, x = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    out = run("task_arithmetic", [x, base], [{"weight": 1.0}, {}], base_index=1)
    assert torch.allclose(out, base + (x - base))


def test_base_may_be_anywhere_in_the_list():
    base, a = t(1, 1), t(3, 0)
    pm = [{"weight": 1.0}, {"weight": None}]
    assert torch.allclose(run("task_arithmetic", [a, base], pm, base_index=1), t(3, 0))


def test_only_the_base_returns_the_base():
    base = t(1, 2)
    assert torch.equal(run("ties", [base], [{}], base_index=0), base)


def test_ties_by_hand():
    base = torch.zeros(4)
    a, b = t(3, -1, 0.5, -2), t(-1, 2, 0.25, -1.5)
    pm = [{}, {"weight": 1, "density": 0.5}, {"weight": 1, "density": 0.5}]
    # trim: a -> [3,0,0,-2], b -> [0,2,0,-1.5]; elect: sum [3,2,0,-3.5] -> [+,+,+,-]
    # agree: a [T,F,F,T], b [F,T,F,T]; disjoint mean: [3/1, 2/1, 0/1, -3.5/2]
    assert torch.allclose(run("ties", [base, a, b], pm, base_index=0), t(3, 2, 0, -1.75))


def test_ties_sign_election_by_hand():
    base = torch.zeros(2)
    pm = [{}, {"weight": 1}, {"weight": 1}]
    # sums [2,-2] elect [+,-]; a agrees everywhere, b only at 1; mean of agreeing: [3, (-1-1)/2]
    assert torch.allclose(run("ties", [base, t(3, -1), t(-1, -1)], pm, base_index=0), t(3, -1))


def test_ties_weights_enter_the_election():
    base = torch.zeros(1)
    pm = [{}, {"weight": 1}, {"weight": 5}]
    # weighted deltas 3 and -5: minus wins, only b agrees: -5 / 5
    assert torch.allclose(run("ties", [base, t(3), t(-1)], pm, base_index=0), t(-1))


def test_ties_at_density_one_with_one_model_is_task_arithmetic():
    g = torch.Generator().manual_seed(4)
    base, x = torch.randn(8, 8, generator=g), torch.randn(8, 8, generator=g)
    pm = [{}, {"weight": 0.7}]
    ties = run("ties", [base, x], pm, {"normalize": False}, base_index=0)
    ta = run("task_arithmetic", [base, x], pm, base_index=0)
    assert torch.allclose(ties, ta)
    # normalized TIES with one model divides by its weight wherever the delta is nonzero
    assert torch.allclose(run("ties", [base, x], pm, base_index=0), x)


def test_dare_linear_keeps_about_density_and_preserves_l1():
    base = torch.zeros(200_000)
    x = torch.linspace(0.5, 1.5, 200_000)
    out = run("dare_linear", [base, x], [{}, {"weight": 1.0, "density": 0.3}], base_index=0)
    kept = (out != 0).float().mean().item()
    assert abs(kept - 0.3) < 0.01  # std ~0.001
    assert torch.allclose(out.abs().sum(), x.abs().sum(), rtol=1e-4)


def test_dare_without_rescale_keeps_values_unchanged():
    base, x = torch.zeros(1000), torch.full((1000,), 2.0)
    out = run("dare_linear", [base, x], [{}, {"weight": 1.0, "density": 0.5}], {"rescale": False}, base_index=0)
    assert set(out.unique().tolist()) <= {0.0, 2.0}


def test_dare_ties_at_density_one_is_ties():
    g = torch.Generator().manual_seed(5)
    base, a, b = (torch.randn(6, 6, generator=g) for _ in range(3))
    pm = [{}, {"weight": 0.4}, {"weight": 0.6}]
    assert torch.allclose(
        run("dare_ties", [base, a, b], pm, base_index=0),
        run("ties", [base, a, b], pm, {"normalize": False}, base_index=0),
    )


def test_breadcrumbs_keeps_the_middle_band():
    base = torch.zeros(100)
    mags = torch.arange(1, 101, dtype=torch.float32)
    x = mags * torch.where(torch.arange(100) % 2 == 0, 1.0, -1.0)
    out = run("breadcrumbs", [base, x], [{}, {"weight": 1, "density": 0.5, "gamma": 0.1}], base_index=0)
    # n_top = 10 largest dropped, then 40 smallest: magnitudes 41..90 survive
    kept = sorted(out[out != 0].abs().tolist())
    assert kept == list(range(41, 91))


def test_breadcrumbs_gamma_is_reduced_to_reach_the_density():
    base, x = torch.zeros(10), torch.arange(1, 11, dtype=torch.float32)
    out = run("breadcrumbs", [base, x], [{}, {"weight": 1, "density": 0.9, "gamma": 0.5}], base_index=0)
    # target 9, n_top 5 -> n_bot -4 -> n_top 1, n_bot 0: drop only the largest
    assert torch.equal(out, torch.cat([torch.arange(1, 10, dtype=torch.float32), torch.zeros(1)]))


def test_della_keep_rate_follows_magnitude_rank():
    rows, n = 4000, 101
    x = torch.arange(1, n + 1, dtype=torch.float32).repeat(rows, 1)
    base = torch.zeros_like(x)
    out = run(
        "della_linear", [base, x], [{}, {"weight": 1, "density": 0.5, "epsilon": 0.2}], {"rescale": False}, base_index=0
    )
    rate = (out != 0).float().mean(dim=0)
    assert abs(rate[0].item() - 0.3) < 0.04  # smallest: density - epsilon
    assert abs(rate[50].item() - 0.5) < 0.04
    assert abs(rate[-1].item() - 0.7) < 0.04  # largest: density + epsilon
    assert abs(rate.mean().item() - 0.5) < 0.01


def test_della_rescale_preserves_l1():
    g = torch.Generator().manual_seed(6)
    x, base = torch.randn(64, 64, generator=g), torch.zeros(64, 64)
    out = run("della_linear", [base, x], [{}, {"weight": 1, "density": 0.4, "epsilon": 0.1}], base_index=0)
    assert torch.allclose(out.abs().sum(), x.abs().sum(), rtol=1e-4)


def test_della_uses_consensus_and_normalize():
    # at density 1 nothing is pruned: della is TIES (normalize on), della_linear is task arithmetic
    base = torch.zeros(2)
    a, b = t(3, -1), t(-1, -1)
    pm = [{}, {"weight": 1}, {"weight": 1}]
    assert torch.allclose(run("della", [base, a, b], pm, base_index=0), t(3, -1))
    assert torch.allclose(run("della_linear", [base, a, b], pm, base_index=0), t(2, -2))


def test_sparsify_stage_takes_only_sparsify_params():
    assert METHODS["ties"].stage.params == ("density", "rescale")
    assert METHODS["breadcrumbs"].stage.params == ("density", "gamma", "rescale")
    assert METHODS["della"].stage.params == ("density", "epsilon", "rescale")
    assert METHODS["task_arithmetic"].stage is None


def test_int8_mask_changes_nothing():
    g = torch.Generator().manual_seed(8)
    base, a, b = (torch.randn(5, 5, generator=g) for _ in range(3))
    pm = [{}, {"weight": 1, "density": 0.6}, {"weight": 0.5, "density": 0.6}]
    assert torch.equal(
        run("ties", [base, a, b], pm, {"int8_mask": True}, base_index=0), run("ties", [base, a, b], pm, base_index=0)
    )


@settings(max_examples=25, deadline=None)
@given(st.floats(min_value=0.1, max_value=10), st.integers(min_value=0, max_value=2**31))
def test_normalized_ties_ignores_a_common_weight_scale(c: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    base, a, b = (torch.randn(4, 4, generator=g) for _ in range(3))
    pm = [{}, {"weight": 0.3, "density": 0.5}, {"weight": 0.9, "density": 0.5}]
    scaled = [{}, {"weight": 0.3 * c, "density": 0.5}, {"weight": 0.9 * c, "density": 0.5}]
    assert torch.allclose(
        run("ties", [base, a, b], pm, base_index=0), run("ties", [base, a, b], scaled, base_index=0), atol=1e-5
    )


@settings(max_examples=25, deadline=None)
@given(st.floats(min_value=-2, max_value=2), st.integers(min_value=0, max_value=2**31))
def test_task_arithmetic_is_linear_in_lambda(lam: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    base, a = torch.randn(5, generator=g), torch.randn(5, generator=g)
    out = run("task_arithmetic", [base, a], [{}, {"weight": 0.5}], {"lambda": lam}, base_index=0)
    assert torch.allclose(out, base + lam * 0.5 * (a - base), atol=1e-5)
