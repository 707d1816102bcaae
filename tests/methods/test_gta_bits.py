"""The torch-free path of the task-arithmetic rows (``Method.bits``) gives the torch steps' bits.

``gta._merge_bits`` takes bf16 inputs as uint16 arrays and each staged model's cached packed
selection (``Keep.pack``), as a build's weight edit finds them; it must equal ``apply_method``
with the same selections for every row, with rescale factors, normalize, lambda and corner
values, and give up (None) where the torch steps must decide (non-finite values, a float32
rescale factor).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mergefile.methods import _gta_kernels, gta
from mergefile.methods.apply import apply_method
from mergefile.methods.base import MergeContext
from mergefile.methods.sparsify import Keep

from .test_gta_fused import WEIGHTS, _models

pytestmark = pytest.mark.skipif(_gta_kernels._numba() is None, reason="numba not installed")


def _u16(t: torch.Tensor) -> np.ndarray:
    return t.reshape(-1).view(torch.int16).numpy().view(np.uint16).copy()


class _Recorded:
    """A stage runner that computes each stage and keeps its packed selection, as a cold build
    stores it; the bits path then gets exactly those selections."""

    def __init__(self):
        self.packed: dict[int, np.ndarray] = {}

    def __call__(self, method, i, x, base, params, ctx):
        ctx = MergeContext(ctx.tensor_name, ctx.is_embed, ctx.base_index, torch.Generator().manual_seed(i))
        y, packed = method.stage.split(x, base, params, ctx)
        assert packed is not None
        self.packed[i] = packed.numpy().copy()
        return y


def _torch_and_bits(method, tensors, per_model, params):
    from mergefile.methods.apply import with_defaults

    rec = _Recorded() if method.stage is not None else None
    ctx = MergeContext("t", base_index=0, generator=torch.Generator().manual_seed(1))
    expected = apply_method(method, [t.clone() for t in tensors], per_model, params, ctx, rec)
    models, glob = with_defaults(method, per_model, params, 0)
    got = method.bits(
        [_u16(t) for t in tensors], rec.packed if rec else {}, models, glob, MergeContext("t", base_index=0)
    )
    return expected, got


@pytest.mark.parametrize("method", gta.METHODS, ids=lambda m: m.name)
@pytest.mark.parametrize("n_models", [1, 3, 5])
@pytest.mark.parametrize("lam", [1.0, 0.7])
@pytest.mark.parametrize("shape", [(24, 37), (8, 128)], ids=["tail", "blocks"])  # 888 = 512 + 376; 2 x 512
def test_bits_path_gives_the_torch_steps_bits(method, n_models, lam, shape):
    tensors = _models(n_models, shape, seed=n_models * 7 + len(method.name))
    extra = {"gamma": 0.05} if "breadcrumbs" in method.name else {"epsilon": 0.1} if "della" in method.name else {}
    per_model = [{}] + [{"weight": w, "density": 0.6, **extra} for w in WEIGHTS[n_models - 1]]
    for normalize in (True, False):
        for rescale in (True, False) if method.stage is not None else (False,):
            params = {"lambda": lam, "normalize": normalize, "rescale": rescale}
            expected, got = _torch_and_bits(method, tensors, per_model, params)
            assert got is not None, (method.name, normalize, rescale)
            assert np.array_equal(got, _u16(expected)), (method.name, normalize, rescale)


def test_only_the_base_is_the_base():
    base = _models(1, (10,), seed=1)[0]
    got = gta.TIES.bits([_u16(base)], {}, [{}], {"normalize": True, "lambda": 1.0}, MergeContext("t", base_index=0))
    assert np.array_equal(got, _u16(base))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_values_leave_it_to_the_torch_steps(bad):
    tensors = _models(2, (40,), seed=3)
    tensors[1][5] = bad
    per_model = [{}, {"weight": 1.0, "density": 0.5}, {"weight": 0.5, "density": 0.5}]
    for method in (gta.TIES, gta.TASK_ARITHMETIC, gta.DARE_TIES):
        _, got = _torch_and_bits(method, tensors, per_model, {})
        assert got is None, method.name


def test_a_float32_rescale_factor_leaves_it_to_the_torch_steps():
    x = torch.ones(16, dtype=torch.bfloat16)
    packed = Keep(torch.ones(16, dtype=torch.bool), torch.tensor(1.5)).pack().numpy()
    assert _gta_kernels.packed_scale_bits(packed) is False
    got = gta.DARE_TIES.bits(
        [_u16(x), _u16(x)],
        {1: packed},
        [{}, {"weight": 1.0}],
        {"normalize": False, "lambda": 1.0},
        MergeContext("t", base_index=0),
    )
    assert got is None


def test_weights_round_and_sum_as_torch_does():
    """``bf16_round``/``bf16_sum`` replace ``torch.tensor(w, dtype=bfloat16)`` and its ``sum()``
    in the bits path: halfway cases, subnormals, huge and negative values, 1 to 17 weights."""
    g = np.random.default_rng(0)
    values = [*g.normal(0, 1, 2000), *(g.normal(0, 1, 500) * 1e-39), 3.0e38, -3.4e38, 1e39, 0.0, -0.0]
    halfway = [float(np.uint32((0x3F80 << 16) | 0x8000 | (k << 17)).view(np.float32)) for k in range(64)]
    for v in [*values, *halfway, 1.0 + 2.0**-8, 1.0 + 2.0**-8 + 2.0**-30]:
        want = torch.tensor([v], dtype=torch.bfloat16).float().item()
        got = float(_gta_kernels.bf16_round([v])[0])
        assert got == want or (np.isnan(got) and np.isnan(want)), v
    for n in range(1, _gta_kernels.MAX_MODELS + 2):
        for _ in range(50):
            w = list(g.normal(0, 1, n) * 10.0 ** g.integers(-3, 3))
            want = torch.tensor(w, dtype=torch.bfloat16).sum().item()
            assert _gta_kernels.bf16_sum(_gta_kernels.bf16_round(w)) == want, w


def test_a_nan_the_mask_drops_still_leaves_it_to_the_torch_steps():
    """torch's ``NaN * 0`` is NaN, so a dropped NaN must not read as a clean zero (both kernels)."""
    g = torch.Generator().manual_seed(4)
    base = torch.randn(64, generator=g).to(torch.bfloat16)
    x = (base.float() + torch.randn(64, generator=g)).to(torch.bfloat16)
    x[3] = float("nan")
    mask = torch.ones(64, dtype=torch.bool)
    mask[3] = False
    packed = Keep(mask).pack().numpy()
    assert _gta_kernels.masked_delta(x, base, packed, None) is None
    assert _gta_kernels.combine_masked_bits([_u16(x)], _u16(base), [packed], [None], [1.0], True, True, 1.0) is None
    assert torch.isnan(Keep(mask).apply(x - base)[3])
