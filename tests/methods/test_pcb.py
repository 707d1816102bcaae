"""PCB merging on small hand-built tensors: what balancing keeps, drops and weighs."""

from __future__ import annotations

import pytest
import torch

from mergefile.methods import ParamCheckError, get_method
from mergefile.methods.pcb import balance, minmax, order_stat

from .helpers import run, t


def _family(n=100, tasks=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=g)
    return base, [base + 0.1 * torch.randn(n, generator=g) for _ in range(tasks)]


def test_each_task_keeps_its_top_share_by_score():
    base, xs = _family()
    taus = torch.stack([x - base for x in xs])
    _, beta = balance(taus, 0.1)
    # entries above the sorted score at index int(100 * 0.9) = 90: the top 9
    assert (beta > 0).sum(dim=1).tolist() == [9, 9, 9]
    assert torch.all(beta.max(dim=1).values == 1.0)


def test_an_entry_no_task_keeps_stays_at_the_base():
    base, xs = _family()
    out = run("pcb", [base, *xs], base_index=0)
    _, beta = balance(torch.stack([x - base for x in xs]), 0.1)
    dropped = beta.sum(dim=0) == 0
    assert int(dropped.sum()) > 50
    assert torch.equal(out[dropped], base[dropped])
    assert not torch.equal(out[~dropped], base[~dropped])


def test_a_task_fighting_the_consensus_loses_the_entry():
    base = torch.zeros(4)
    a = t(1.0, 0.5, 0.5, 0.5)
    b = t(1.0, 0.5, 0.5, 0.5)
    c = t(-1.0, 0.5, 0.5, 0.5)  # entry 0: against a + b + c = 1
    clipped, beta = balance(torch.stack([a, b, c]), 1.0)
    assert beta[2, 0] == 0 and beta[0, 0] > 0 and beta[1, 0] > 0
    out = run("pcb", [base, a, b, c], params={"pcb_ratio": 1.0}, base_index=0)
    # the mean of a's and b's entry, c's left out; below 10^4 entries the largest |tau| is
    # clipped to the next one (index int(4 * 0.9999) - 1 = 2 of the sorted 0.5, 0.5, 0.5, 1)
    assert out[0] == pytest.approx(0.5)
    assert clipped[0, 0] == pytest.approx(0.5) and clipped[2, 0] == pytest.approx(-0.5)


def test_weights_scale_only_the_numerator():
    base, xs = _family(n=40, tasks=2)
    one = run("pcb", [base, *xs], base_index=0)
    two = run("pcb", [base, *xs], per_model=[{}, {"weight": 2.0}, {"weight": 2.0}], base_index=0)
    torch.testing.assert_close(two - base, 2 * (one - base))


def test_outliers_are_clipped_to_the_tasks_order_statistics():
    base = torch.zeros(20000)
    a = torch.linspace(-1, 1, 20000)
    a[7] = 50.0  # far beyond every other entry
    clipped, _ = balance(torch.stack([a - base]), 0.5)
    assert clipped[0, 7] == pytest.approx(float(a.abs().sort().values[int(20000 * (1 - 1e-4)) - 1]))


def test_identical_models_give_the_base_without_nan():
    base = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    out = run("pcb", [base, base.clone(), base.clone()], base_index=0)
    assert torch.equal(out, base)


def test_helpers():
    assert minmax(torch.tensor([[1.0, 3.0, 2.0], [4.0, 4.0, 4.0]])).tolist() == [[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]]
    assert order_stat(torch.tensor([[5.0, 1.0, 3.0, 2.0]]), 0.5).item() == 3.0  # sorted index 2
    assert order_stat(torch.tensor([[5.0, 1.0]]), 1.0).item() == 5.0


@pytest.mark.parametrize("bad", [0.0, 1.5])
def test_pcb_ratio_out_of_range_is_refused(bad):
    with pytest.raises(ParamCheckError, match="pcb_ratio must lie in"):
        get_method("pcb").check({"pcb_ratio": bad}, [{}, {}], 0)
