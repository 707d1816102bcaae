"""TSV-M on small hand-built tensors: its defining properties and its cached stage."""

from __future__ import annotations

import pytest
import torch

from mergefile.methods import MergeContext, ParamCheckError, get_method
from mergefile.methods._svd import pack, polar, randomized_svd, unpack

from .helpers import run, stage


def _family(shape=(12, 8), tasks=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return base, [base + 0.1 * torch.randn(shape, generator=g) for _ in range(tasks)]


def test_one_task_at_full_rank_is_task_arithmetic():
    base, (a,) = _family(tasks=1)
    out = run("tsv", [base, a], params={"sv_reduction": 1.0, "alpha": 0.7}, base_index=0)
    ta = run("task_arithmetic", [base, a], per_model=[{}, {"weight": 0.7}], base_index=0)
    torch.testing.assert_close(out, ta, rtol=1e-5, atol=1e-5)


def test_merged_task_vector_has_the_tasks_kept_singular_values():
    """Orthogonalized bases: the merge's spectrum is exactly the concatenated truncated spectra."""
    base, xs = _family(tasks=2)
    w = [0.5, 2.0]
    out = run("tsv", [base, *xs], per_model=[{}, {"weight": w[0]}, {"weight": w[1]}], base_index=0)
    kept = torch.cat([wi * torch.linalg.svdvals(x - base)[:4] for wi, x in zip(w, xs)])  # k = 8 / 2
    got = torch.linalg.svdvals(out - base)
    torch.testing.assert_close(got, kept.sort(descending=True).values, rtol=1e-4, atol=1e-5)


def test_merge_is_not_the_sum_of_low_rank_parts():
    """With overlapping task subspaces the orthogonalization changes the result."""
    base, xs = _family(tasks=2)
    out = run("tsv", [base, *xs], base_index=0)
    low = [torch.linalg.svd(x - base, full_matrices=False) for x in xs]
    plain = base + sum((u[:, :4] * s[:4]) @ vh[:4] for u, s, vh in low)
    assert not torch.allclose(out, plain, atol=1e-4)


def test_vectors_take_the_mean_of_weighted_task_vectors():
    base = torch.zeros(3)
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 0.0, -1.0])
    out = run("tsv", [base, a, b], per_model=[{}, {"weight": 1.0}, {"weight": 2.0}], base_index=0)
    assert torch.equal(out, (a + 2 * b) / 2)


def test_stage_keeps_half_the_rank_and_any_task_count_uses_its_prefix():
    base, (a,) = _family(tasks=1)
    packed = stage("tsv", a, base)
    u, s, vh = unpack(packed, 12)
    assert packed.shape == (4, 12 + 1 + 8) and u.shape == (12, 4) and vh.shape == (4, 8)
    torch.testing.assert_close(s, torch.linalg.svdvals(a - base)[:4])
    torch.testing.assert_close(u.T @ u, torch.eye(4), atol=1e-5, rtol=0)
    assert stage("tsv", a, base, sv_reduction=0.25).shape == (2, 21)


def test_three_tasks_use_a_third_of_the_rank():
    base, xs = _family(shape=(9, 9), tasks=3)
    out = run("tsv", [base, *xs], base_index=0)
    assert int((torch.linalg.svdvals(out - base) > 1e-5).sum()) == 9  # 3 tasks x int(9 / 3)


def test_pack_round_trips():
    u, s, vh = torch.randn(5, 3), torch.rand(3), torch.randn(3, 7)
    u2, s2, vh2 = unpack(pack(u, s, vh), 5)
    assert torch.equal(u, u2) and torch.equal(s, s2) and torch.equal(vh, vh2)


def test_polar_factor_is_orthonormal_and_nearest():
    a = torch.randn(10, 4, generator=torch.Generator().manual_seed(1))
    p = polar(a)
    torch.testing.assert_close(p.T @ p, torch.eye(4), atol=1e-5, rtol=0)
    q = torch.linalg.qr(a).Q  # another orthonormal basis of the same space is farther from a
    assert torch.linalg.norm(a - p) <= torch.linalg.norm(a - q) + 1e-6


def test_randomized_svd_finds_the_top_triplets_and_follows_its_generator():
    g = torch.Generator().manual_seed(2)
    low = (
        torch.randn(200, 6, generator=g)
        @ torch.diag(torch.tensor([9.0, 7, 5, 4, 3, 2]))
        @ torch.randn(6, 40, generator=g)
    )
    m = low + 0.01 * torch.randn(200, 40, generator=g)
    u, s, vh = randomized_svd(m, 4, torch.Generator().manual_seed(0))
    exact = torch.linalg.svdvals(m)[:4]
    torch.testing.assert_close(s, exact, rtol=1e-4, atol=0)
    again = randomized_svd(m, 4, torch.Generator().manual_seed(0))
    assert all(torch.equal(x, y) for x, y in zip((u, s, vh), again))


def test_embeddings_take_the_randomized_svd():
    g = torch.Generator().manual_seed(4)
    base = torch.randn(300, 64, generator=g)
    update = (
        torch.randn(300, 12, generator=g) @ torch.diag(torch.linspace(3, 0.5, 12)) @ torch.randn(12, 64, generator=g)
    )
    x = base + update + 0.01 * torch.randn(300, 64, generator=g)
    m = get_method("tsv")
    ctx = MergeContext("model.embed_tokens.weight", True, 0, torch.Generator().manual_seed(0))
    packed = m.stage.fn(x, base, {"sv_reduction": 0.125}, ctx)
    _, s, _ = unpack(packed, 300)
    torch.testing.assert_close(s, torch.linalg.svdvals(x - base)[:8], rtol=1e-3, atol=0)
    exact = m.stage.fn(x, base, {"sv_reduction": 0.125}, MergeContext("w", False, 0, None))
    assert not torch.equal(packed, exact)  # a different (approximate) algorithm ran
    # with half the rank asked for the exact SVD runs, embedding or not
    half = m.stage.fn(x, base, {"sv_reduction": 0.5}, ctx)
    assert torch.equal(half, m.stage.fn(x, base, {"sv_reduction": 0.5}, MergeContext("w", False, 0, None)))


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_sv_reduction_out_of_range_is_refused(bad):
    with pytest.raises(ParamCheckError, match="sv_reduction must lie in"):
        get_method("tsv").check({"sv_reduction": bad, "alpha": 1.0}, [{}, {}], 0)
