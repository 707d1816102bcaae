"""The fused bf16 kernels (``methods/_gta_kernels.py``) give the bits of the torch steps.

Every task-arithmetic row (task_arithmetic, TIES, DARE, Breadcrumbs, DELLA and their linear
variants) is run twice on the same corner tensors, once through the kernels and once with them
switched off, and the results must be equal bit for bit: exact ties across models, zeros of both
signs, subnormals, tiny deltas that round away, negative and zero weights, lambda, normalize on
and off, cached-stage rebuilds. Non-finite inputs and overflows must fall back to the torch steps.
"""

from __future__ import annotations

import pytest
import torch

from mergefile.methods import _gta_kernels, gta
from mergefile.methods.apply import apply_method
from mergefile.methods.base import MergeContext
from mergefile.methods.sparsify import Keep

pytestmark = pytest.mark.skipif(_gta_kernels._numba() is None, reason="numba not installed")


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16)


def _models(n_models: int, shape: tuple[int, ...], seed: int) -> list[torch.Tensor]:
    """A bf16 base and ``n_models`` fine-tunes of it whose deltas hit the corners."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g).to(torch.bfloat16)
    base.view(-1)[: base.numel() // 8] = -0.0
    out = [base]
    for _ in range(n_models):
        scale = 10.0 ** torch.randint(-40, 2, shape, generator=g).float()
        x = (base.float() + torch.randn(shape, generator=g) * scale).to(torch.bfloat16)
        same = torch.rand(shape, generator=g) < 0.2
        x[same] = base[same]  # zero deltas
        out.append(x)
    flat = [t.view(-1) for t in out[1:]]
    k = flat[0].numel() // 5
    for t in flat[1:]:
        t[k : 2 * k] = flat[0][k : 2 * k]  # the same delta in every model: exact ties
    flat[0][-1] = torch.finfo(torch.bfloat16).tiny / 4 + base.view(-1)[-1]
    return out


def _run(method, tensors, per_model, params, seed, fused: bool, monkeypatch) -> torch.Tensor:
    with monkeypatch.context() as m:
        if not fused:
            m.setattr(_gta_kernels, "available", lambda tensors: False)
        ctx = MergeContext("t", base_index=0, generator=torch.Generator().manual_seed(seed))
        return apply_method(method, [t.clone() for t in tensors], per_model, params, ctx)


WEIGHTS = [[0.5], [0.5, 0.3], [0.5, -0.3, 0.2], [0.0, 0.7, 0.2, 0.1], [1.0, 0.25, -0.5, 0.3, 0.33]]


@pytest.mark.parametrize("method", gta.METHODS, ids=lambda m: m.name)
@pytest.mark.parametrize("n_models", [1, 2, 3, 5])
@pytest.mark.parametrize("lam", [1.0, 0.7])
def test_fused_kernels_give_the_torch_steps_bits(method, n_models, lam, monkeypatch):
    tensors = _models(n_models, (24, 37), seed=n_models * 13 + len(method.name))
    extra = {"gamma": 0.05} if "breadcrumbs" in method.name else {"epsilon": 0.1} if "della" in method.name else {}
    per_model = [{}] + [{"weight": w, "density": 0.6, **extra} for w in WEIGHTS[n_models - 1]]
    for normalize in (True, False):
        params = {"lambda": lam, "normalize": normalize}
        expected = _run(method, tensors, per_model, params, 5, False, monkeypatch)
        got = _run(method, tensors, per_model, params, 5, True, monkeypatch)
        assert torch.equal(_bits(got), _bits(expected)), (method.name, normalize)


def test_the_kernels_run_and_cover_the_most_models(monkeypatch):
    """Not vacuous: the fused path is taken (and at MAX_MODELS models), the torch one is not."""
    n = _gta_kernels.MAX_MODELS
    tensors = _models(n, (9, 11), seed=3)
    per_model = [{}] + [{"weight": 1.0 / (i + 1), "density": 0.5} for i in range(n)]
    calls = []
    real = _gta_kernels.combine
    monkeypatch.setattr(_gta_kernels, "combine", lambda *a, **k: calls.append(1) or real(*a, **k))
    got = _run(gta.TIES, tensors, per_model, {}, 1, True, monkeypatch)
    assert calls
    monkeypatch.setattr(_gta_kernels, "combine", real)
    assert torch.equal(_bits(got), _bits(_run(gta.TIES, tensors, per_model, {}, 1, False, monkeypatch)))
    more = _models(n + 1, (4,), seed=4)
    assert not _gta_kernels.available(more[:1] + more)  # one model too many: the torch steps


@pytest.mark.parametrize("scale", [None, 1.7])
def test_stage_rebuild_from_a_packed_mask_is_the_torch_product(scale):
    g = torch.Generator().manual_seed(2)
    base = torch.randn(1003, generator=g).to(torch.bfloat16)
    x = (base.float() + torch.randn(1003, generator=g) * 1e-2).to(torch.bfloat16)
    x[:200] = base[:200]
    keep = Keep(torch.rand(1003, generator=g) < 0.4, None if scale is None else torch.tensor(scale).bfloat16())
    expected = keep.apply(x - base)
    got = _gta_kernels.masked_delta(x, base, keep.pack().numpy(), keep.scale)
    assert torch.equal(_bits(got), _bits(expected))
    assert torch.equal(_bits(gta._stage_apply(x, base, keep.pack())), _bits(expected))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 3e38])
def test_non_finite_values_fall_back_to_the_torch_steps(bad, monkeypatch):
    """NaN/inf inputs, and a sum that overflows bf16 (3e38 + 3e38), give the torch path's bits."""
    tensors = _models(3, (50,), seed=9)
    for t in tensors[1:]:
        t[7] = bad
    per_model = [{}] + [{"weight": 1.0, "density": 1.0}] * 3
    for method in (gta.TIES, gta.TASK_ARITHMETIC):
        got = _run(method, tensors, per_model, {}, 0, True, monkeypatch)
        expected = _run(method, tensors, per_model, {}, 0, False, monkeypatch)
        assert torch.equal(_bits(got), _bits(expected)), method.name
    ds = [t - tensors[0] for t in tensors[1:]]
    assert _gta_kernels.combine(ds, False, tensors[0], [1.0] * 3, True, True, 1.0) is None


def _torch_combine(ds, base, weights, elect, normalize, lam):
    """``gta._merge``'s torch steps from given task vectors."""
    deltas = torch.stack(ds)
    w = torch.tensor(weights, dtype=deltas.dtype).view(-1, 1)
    for j in range(deltas.shape[0]):
        deltas[j].mul_(w[j])
    mixed = gta.COMBINERS[gta.Consensus.SUM if elect else gta.Consensus.NONE](deltas, w, normalize)
    return base + (mixed * lam if lam != 1.0 else mixed)


@pytest.mark.parametrize("elect", [True, False])
@pytest.mark.parametrize("normalize", [True, False])
def test_exact_cancellations_and_all_zero_entries(elect, normalize):
    """A weighted sum of exactly 0 elects + (the positive side agrees); entries no model changes
    keep the base (the zero guard of the divisor), all without leaving the fused path."""
    g = torch.Generator().manual_seed(11)
    base = torch.randn(600, generator=g).to(torch.bfloat16)
    d1 = torch.randn(600, generator=g).to(torch.bfloat16)
    d2, d3 = -d1, torch.randn(600, generator=g).to(torch.bfloat16)
    d3[:300] = 0.0  # first half: 0.5*d1 + 0.5*(-d1) + 0 == 0 exactly
    d1[500:], d2[500:], d3[500:] = 0.0, -0.0, 0.0  # last entries: nothing changes
    ds, weights = [d1, d2, d3], [0.5, 0.5, 0.25]
    got = _gta_kernels.combine(ds, False, base, weights, elect, normalize, 1.0)
    assert got is not None
    assert torch.equal(_bits(got), _bits(_torch_combine(ds, base, weights, elect, normalize, 1.0)))
    if elect:  # the tie went to the positive deltas
        pos = (d1[:300] > 0).nonzero().flatten()
        mixed = got[pos].float() - base[pos].float()
        assert torch.all(mixed >= 0)
