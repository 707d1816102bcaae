"""WUDI on small hand-built tensors: the loss it minimizes, its gradient, its fallbacks."""

from __future__ import annotations

import pytest
import torch

from mergefile.methods import ParamCheckError, get_method
from mergefile.methods.wudi import adam, gradient

from .helpers import run


def _loss(t: torch.Tensor, taus: torch.Tensor) -> torch.Tensor:
    """The paper's objective, written directly (m x m products)."""
    return sum(((t - tau) @ tau.T).square().sum() / tau.square().sum() for tau in taus)


@pytest.mark.parametrize("shape", [(10, 6), (6, 10)], ids=["tall", "wide"])
def test_analytic_gradient_is_the_objectives(shape):
    g = torch.Generator().manual_seed(0)
    taus = torch.randn(3, *shape, generator=g, dtype=torch.float64)
    t = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    _loss(t, taus).backward()
    torch.testing.assert_close(gradient(taus)(t.detach()), t.grad)


def test_optimization_lowers_the_interference_loss():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(12, 8, generator=g)
    xs = [base + 0.1 * torch.randn(12, 8, generator=g) for _ in range(3)]
    taus = torch.stack([x - base for x in xs])
    start = _loss(taus.sum(0), taus)
    out = run("wudi", [base, *xs], params={"iterations": 200, "lr": 1e-3}, base_index=0)
    assert _loss(out - base, taus) < 0.5 * start


def test_zero_iterations_is_task_arithmetic_and_vectors_take_the_mean():
    g = torch.Generator().manual_seed(2)
    base = torch.randn(5, 4, generator=g)
    xs = [base + torch.randn(5, 4, generator=g) for _ in range(2)]
    out = run("wudi", [base, *xs], params={"iterations": 0}, base_index=0)
    torch.testing.assert_close(out, xs[0] + xs[1] - base)
    vec = run("wudi", [base[0], xs[0][0], xs[1][0]], base_index=0)
    torch.testing.assert_close(vec, (xs[0][0] + xs[1][0]) / 2)


def test_adam_matches_torch_optim_adam():
    g = torch.Generator().manual_seed(3)
    target = torch.randn(4, 3, generator=g)
    start = torch.randn(4, 3, generator=g)
    grad = lambda t: 2 * (t - target)  # noqa: E731
    ours = adam(start.clone(), grad, 25, 0.05)
    p = torch.nn.Parameter(start.clone())
    opt = torch.optim.Adam([p], lr=0.05)
    for _ in range(25):
        opt.zero_grad()
        ((p - target) ** 2).sum().backward()
        opt.step()
    torch.testing.assert_close(ours, p.detach())


@pytest.mark.parametrize(
    "params, words",
    [({"iterations": -1, "lr": 1e-5}, "iterations must be >= 0"), ({"iterations": 10, "lr": 0.0}, "lr must be > 0")],
)
def test_bad_parameters_are_refused(params, words):
    with pytest.raises(ParamCheckError, match=words):
        get_method("wudi").check(params, [{}, {}], 0)
