"""Isotropic merging on small hand-built tensors: flat spectra, subspaces, fallbacks."""

from __future__ import annotations

import pytest
import torch

from mergefile.methods import MergeContext, ParamCheckError, get_method
from mergefile.methods.iso import spaces

from .helpers import run


def _family(shape=(10, 6), tasks=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return base, [base + 0.1 * torch.randn(shape, generator=g) * (t + 1) for t in range(tasks)]


@pytest.mark.parametrize("method", ["iso_c", "iso_cts"])
def test_merged_task_matrix_has_equal_singular_values(method):
    base, xs = _family()
    out = run(method, [base, *xs], params={"alpha": 1.0}, base_index=0)
    s = torch.linalg.svdvals(out - base)
    assert s.min() > 0.01
    torch.testing.assert_close(s, torch.full_like(s, float(s.mean())), rtol=1e-4, atol=0)


def test_iso_c_spreads_the_sums_mean_singular_value_over_its_singular_vectors():
    base, xs = _family()
    total = sum(x - base for x in xs)
    u, s, vh = torch.linalg.svd(total, full_matrices=False)
    out = run("iso_c", [base, *xs], params={"alpha": 0.5}, base_index=0)
    torch.testing.assert_close(out, base + 0.5 * s.mean() * u @ vh, rtol=1e-5, atol=1e-5)


def test_iso_c_of_a_rank_one_update_keeps_its_direction():
    base = torch.zeros(4, 3)
    a = torch.outer(torch.tensor([1.0, 0, 0, 0]), torch.tensor([0.0, 2.0, 0]))
    out = run("iso_c", [base, a], base_index=0)
    # the spectrum [2, 0, 0] flattens to [2/3] * 3: the zero directions get weight too
    torch.testing.assert_close(torch.linalg.svdvals(out), torch.full((3,), 2 / 3), rtol=1e-5, atol=1e-6)
    assert out[0, 1] == pytest.approx(2 / 3, abs=1e-5)


def test_iso_cts_with_the_whole_rank_common_is_iso_c():
    base, xs = _family()
    cts = run("iso_cts", [base, *xs], params={"common_space_fraction": 1.0}, base_index=0)
    torch.testing.assert_close(cts, run("iso_c", [base, *xs], base_index=0), rtol=1e-5, atol=1e-5)


def test_iso_cts_adds_task_directions_outside_the_common_space():
    base, xs = _family(shape=(12, 8), tasks=2)
    cts = run("iso_cts", [base, *xs], params={"common_space_fraction": 0.5}, base_index=0)
    total = sum(x - base for x in xs)
    uc = torch.linalg.svd(total, full_matrices=False).U[:, :4]
    outside = (cts - base) - uc @ (uc.T @ (cts - base))
    assert torch.linalg.norm(outside) > 0.1 * torch.linalg.norm(cts - base)
    assert not torch.allclose(cts, run("iso_c", [base, *xs], base_index=0), atol=1e-3)


@pytest.mark.parametrize(
    "r, tasks, fraction, expected",
    [
        (16, 3, 0.8, (13, 1)),  # FusionBench's rounding: the task-specific rest is 3 x round(3.2 / 3)
        (768, 8, 0.8, (616, 19)),
        (7, 2, 0.0, (1, 3)),  # round(3.5) = 4 per task would need 8 > 7 dimensions: capped at 3
        (10, 4, 1.0, (10, 0)),
    ],
)
def test_spaces_split_the_rank(r, tasks, fraction, expected):
    common, per_task = spaces(r, tasks, fraction)
    assert (common, per_task) == expected and common + tasks * per_task <= r


@pytest.mark.parametrize("method", ["iso_c", "iso_cts"])
def test_vectors_and_embeddings_take_the_mean_task_vector(method):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(20, 4, generator=g)
    a, b = base + torch.randn(20, 4, generator=g), base + torch.randn(20, 4, generator=g)
    m = get_method(method)
    pm = [{}, {"weight": 1.0}, {"weight": 3.0}]
    params = {p.name: p.default for p in m.global_params}
    embed = m.merge([base, a, b], pm, params, MergeContext("model.embed_tokens.weight", True, 0, None))
    torch.testing.assert_close(embed, base + ((a - base) + 3 * (b - base)) / 2)
    vec = run(method, [base[:, 0], a[:, 0], b[:, 0]], per_model=pm, base_index=0)
    torch.testing.assert_close(vec, base[:, 0] + ((a - base)[:, 0] + 3 * (b - base)[:, 0]) / 2)


def test_common_space_fraction_out_of_range_is_refused():
    with pytest.raises(ParamCheckError, match="common_space_fraction must lie in"):
        get_method("iso_cts").check({"common_space_fraction": 1.2, "alpha": 1.0}, [{}, {}], 0)
