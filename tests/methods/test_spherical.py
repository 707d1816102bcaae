"""slerp, nuslerp, multislerp, karcher."""

from __future__ import annotations

import math

import pytest
import torch

from mergefile.errors import ConfigError

from .helpers import run, t

S = math.sqrt(0.5)


def test_slerp_orthogonal_midpoint_by_hand():
    out = run("slerp", [t(1, 0), t(0, 1)], params={"t": 0.5}, base_index=0)
    assert torch.allclose(out, t(S, S))


def test_slerp_keeps_unnormalized_magnitudes():
    # coefficients sin(pi/4)/sin(pi/2) applied to the raw vectors [2,0] and [0,1]
    out = run("slerp", [t(2, 0), t(0, 1)], params={"t": 0.5}, base_index=0)
    assert torch.allclose(out, t(2 * S, S))


def test_slerp_endpoints():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 3, generator=g), torch.randn(7, 3, generator=g)
    assert torch.allclose(run("slerp", [a, b], params={"t": 0.0}, base_index=0), a, atol=1e-6)
    assert torch.allclose(run("slerp", [a, b], params={"t": 1.0}, base_index=0), b, atol=1e-6)
    # t = 0 is the base even when the base comes second
    assert torch.allclose(run("slerp", [a, b], params={"t": 0.0}, base_index=1), b, atol=1e-6)


def test_slerp_colinear_falls_back_to_lerp():
    out = run("slerp", [t(1, 2), t(2, 4)], params={"t": 0.25}, base_index=0)
    assert torch.allclose(out, t(1.25, 2.5))


def test_slerp_single_tensor_is_copied():
    x = t(1, 2)
    assert run("slerp", [x], params={"t": 0.3}, base_index=0) is x


def test_nuslerp_equal_weights_midpoint():
    out = run("nuslerp", [t(1, 0), t(0, 1)], [{"weight": 1}, {"weight": 1}])
    assert torch.allclose(out, t(S, S))


@pytest.mark.parametrize("tt", [0.1, 0.35, 0.8])
def test_nuslerp_flattened_agrees_with_slerp(tt: float):
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    nu = run("nuslerp", [a, b], [{"weight": 1 - tt}, {"weight": tt}])
    sl = run("slerp", [a, b], params={"t": tt}, base_index=0)
    assert torch.allclose(nu, sl, atol=1e-5)


def test_nuslerp_per_row_by_hand():
    a, b = torch.tensor([[1.0, 1.0], [0.0, 1.0]]), torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    pm = [{"weight": 1}, {"weight": 1}]
    # rows are 45 degrees apart: both coefficients sin(pi/8)/sin(pi/4)
    c = math.sin(math.pi / 8) / math.sin(math.pi / 4)
    rows = run("nuslerp", [a, b], pm, {"nuslerp_flatten": False})
    assert torch.allclose(rows, torch.tensor([[c, 2 * c], [c, 2 * c]]))
    # columns: [1,0]->[0,1] (90 degrees) and [1,1]->[1,1] (colinear: lerp)
    cols = run("nuslerp", [a, b], pm, {"nuslerp_flatten": False, "nuslerp_row_wise": True})
    assert torch.allclose(cols, torch.tensor([[S, 1.0], [S, 1.0]]))


def test_nuslerp_with_base_slerps_task_vectors():
    base = t(1, 1)
    out = run("nuslerp", [base, t(2, 1), t(1, 2)], [{}, {"weight": 1}, {"weight": 1}], base_index=0)
    assert torch.allclose(out, t(1 + S, 1 + S))


def test_nuslerp_zero_weight_sum_uses_half():
    out = run("nuslerp", [t(1, 0), t(0, 1)], [{"weight": 1}, {"weight": -1}])
    assert torch.allclose(out, t(S, S))


def test_nuslerp_needs_two_models_besides_base():
    with pytest.raises(ConfigError, match="exactly two"):
        run("nuslerp", [t(1, 0), t(0, 1), t(1, 1)], [{"weight": 1}] * 3)


def test_multislerp_one_model_returns_it():
    x = torch.randn(3, 3)
    assert run("multislerp", [x], [{"weight": 2.0}]) is x


def test_multislerp_orthogonal_by_hand():
    out = run("multislerp", [t(2, 0), t(0, 2)], [{"weight": 1}, {"weight": 1}])
    assert torch.allclose(out, t(2 * S, 2 * S))


def test_multislerp_symmetric_pair_agrees_with_slerp():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(20, generator=g), torch.randn(20, generator=g)
    b = b / b.norm() * a.norm()  # equal norms: the barycentre is the geodesic midpoint
    ms = run("multislerp", [a, b], [{"weight": 1}, {"weight": 1}])
    assert torch.allclose(ms, run("slerp", [a, b], params={"t": 0.5}, base_index=0), atol=1e-5)


def test_multislerp_with_base_adds_it_back():
    base = t(5, 5)
    out = run("multislerp", [base, t(7, 5), t(5, 7)], [{}, {"weight": 1}, {"weight": 1}], base_index=0)
    assert torch.allclose(out, t(5 + 2 * S, 5 + 2 * S))


def test_multislerp_antipodal_two_falls_back_to_linear():
    out = run("multislerp", [t(1, 0), t(-1, 0)], [{"weight": 1}, {"weight": 1}])
    assert torch.allclose(out, t(0, 0))


def test_multislerp_antipodal_many_is_an_error():
    xs = [t(1, 0), t(-1, 0), t(1, 0), t(-1, 0)]
    with pytest.raises(ConfigError, match="zero"):
        run("multislerp", xs, [{"weight": 1}] * 4)


def test_karcher_of_identical_points_is_the_point():
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(run("karcher", [x, x.clone(), x.clone()]), x, atol=1e-6)


def test_karcher_orthogonal_midpoint():
    out = run("karcher", [t(1, 0), t(0, 3)])
    assert torch.allclose(out, t(2 * S, 2 * S), atol=1e-5)  # mean norm 2 on the 45-degree ray


def test_karcher_three_points_on_a_circle():
    pts = [t(math.cos(a), math.sin(a)) for a in (0.0, 0.3, 0.9)]
    out = run("karcher", pts, params={"max_iter": 50, "tol": 1e-9})
    mean = 0.4  # on a circle the Karcher mean angle is the mean angle
    assert torch.allclose(out, t(math.cos(mean), math.sin(mean)), atol=1e-5)


def test_karcher_single_input_and_zero_vectors():
    x = t(1, 2)
    assert run("karcher", [x]) is x
    assert torch.equal(run("karcher", [t(0, 0), t(0, 0)]), t(0, 0))
