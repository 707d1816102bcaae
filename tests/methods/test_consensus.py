"""Consensus merging (TALL masks) on hand-built tensors."""

from __future__ import annotations

import pytest
import torch

from mergefile.methods import ParamCheckError, get_method
from mergefile.methods.consensus import consensus_mask, trim

from .helpers import run, t

# base 0; tau_m = a + b = [1, 1, 0.2, 0, 2]. With mask_lambda 0.6 the TALL masks are
# a: [T, F, T, F, F] (|1| > 0; |0| !> 0.6; 0.1 > 0.06; 0 !> 0; 0.5 !> 0.9)
# b: [F, T, T, F, T]
BASE = torch.zeros(5)
A = t(1.0, 0.0, 0.1, 0.0, 0.5)
B = t(0.0, 1.0, 0.1, 0.0, 1.5)


@pytest.mark.parametrize(
    "k, kept",
    [
        (0, t(1.0, 1.0, 0.2, 0.0, 2.0)),  # no pruning: task arithmetic
        (1, t(1.0, 1.0, 0.2, 0.0, 2.0)),  # every entry some task's mask keeps
        (2, t(0.0, 0.0, 0.2, 0.0, 0.0)),  # only entries both tasks need
        (3, t(0.0, 0.0, 0.0, 0.0, 0.0)),  # more than the tasks: the base
    ],
)
def test_consensus_ta_keeps_entries_k_masks_agree_on(k, kept):
    out = run("consensus_ta", [BASE, A, B], params={"k": k}, base_index=0)
    torch.testing.assert_close(out, kept)


def test_k1_keeps_exactly_the_union_of_the_task_masks():
    g = torch.Generator().manual_seed(3)
    base = torch.randn(64, generator=g)
    xs = [base + torch.randn(64, generator=g) * s for s in (0.1, 0.3, 0.05)]
    taus = torch.stack([x - base for x in xs])
    merged = taus.sum(0)
    masks = taus.abs() > 1.5 * (merged - taus).abs()
    out = run("consensus_ta", [base, *xs], params={"k": 1, "mask_lambda": 1.5}, base_index=0)
    torch.testing.assert_close(out, base + merged * masks.any(0))
    assert 0 < int(masks.any(0).sum()) < 64  # the mask did drop something and keep something


def test_weights_scale_the_task_vectors_before_the_masks():
    out = run(
        "consensus_ta", [BASE, A, B], per_model=[{}, {"weight": 2.0}, {"weight": 1.0}], params={"k": 1}, base_index=0
    )
    # tau_m = [2, 1, 0.3, 0, 2.5]; a: [T, F, T, F, F], b: [F, T, F, F, T] (0.1 !> 0.6 * 0.2)
    torch.testing.assert_close(out, t(2.0, 1.0, 0.3, 0.0, 2.5))


def test_mask_lambda_moves_the_threshold():
    # mask_lambda 0: every non-zero entry is in its task's mask; k=2 keeps entries both moved
    out = run("consensus_ta", [BASE, A, B], params={"k": 2, "mask_lambda": 0.0}, base_index=0)
    torch.testing.assert_close(out, t(0.0, 0.0, 0.2, 0.0, 2.0))


def test_consensus_ties_with_k0_is_ties():
    g = torch.Generator().manual_seed(5)
    base = torch.randn(8, 6, generator=g)
    xs = [base + 0.1 * torch.randn(8, 6, generator=g) for _ in range(3)]
    pm = [{}] + [{"density": 0.4, "weight": 1.0}] * 3
    ours = run("consensus_ties", [base, *xs], per_model=pm, params={"k": 0}, base_index=0)
    ties = run("ties", [base, *xs], per_model=pm, base_index=0)
    torch.testing.assert_close(ours, ties)
    pruned = run("consensus_ties", [base, *xs], per_model=pm, params={"k": 2}, base_index=0)
    kept = pruned != base
    assert 0 < int(kept.sum()) < int((ties != base).sum())  # consensus removed some TIES entries
    assert torch.equal(pruned[kept], ties[kept])


def test_trim_keeps_the_top_int_n_density_entries():
    assert torch.equal(trim(t(0.1, -3.0, 2.0, 0.5, -1.0), 0.5), t(0.0, -3.0, 2.0, 0.0, 0.0))
    assert torch.equal(trim(t(1.0, 2.0), 0.0), t(0.0, 0.0))
    assert torch.equal(trim(t(1.0, 2.0), 1.0), t(1.0, 2.0))


def test_consensus_mask_counts_tasks():
    taus = torch.stack([A, B])
    assert consensus_mask(taus, taus.sum(0), 0.6, 1).tolist() == [True, True, True, False, True]


@pytest.mark.parametrize(
    "params, per_model, words",
    [
        ({"k": -1, "mask_lambda": 0.6}, [{}, {}], "k must be >= 0"),
        ({"k": 2, "mask_lambda": -0.1}, [{}, {}], "mask_lambda must be >= 0"),
        ({"k": 2, "mask_lambda": 0.6}, [{}, {"density": 1.5}], "density must lie in [0, 1]"),
    ],
)
def test_bad_parameters_are_refused(params, per_model, words):
    with pytest.raises(ParamCheckError, match=words.replace("[", r"\[").replace("]", r"\]")):
        get_method("consensus_ties").check(params, per_model, 0)
