"""The method contract, checked for every registered method (reference §1, methods/base.py)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from mergefile.errors import ConfigError
from mergefile.methods import METHODS, BaseRule, EmbedPolicy, Method, apply_method, get_method

from .helpers import ctx

NAMES = sorted(METHODS)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(16, 24), (40,)]

STAGED = {"ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "tsv"}
PACKED_STAGE = {"tsv"}  # the stage output is a packed SVD, not a tensor of the input's shape
EXTENSIONS = {"tsv", "iso_c", "iso_cts", "consensus_ta", "consensus_ties", "magmax", "pcb", "wudi"}  # issue 19
RANDOM_STAGE = {"dare_ties", "dare_linear", "della", "della_linear"}

EMBED = {
    EmbedPolicy.BASE: {
        "task_arithmetic",
        "ties",
        "dare_ties",
        "dare_linear",
        "breadcrumbs",
        "breadcrumbs_ties",
        "della",
        "della_linear",
        "sce",
        "ram",
        "ramplus_tl",
        "nearswap",
        *EXTENSIONS,
    },
    EmbedPolicy.COMMON: {"linear", "slerp", "nuslerp", "multislerp", "karcher", "model_stock", "arcee_fusion"},
    EmbedPolicy.EXACT: {"passthrough"},
}


def _count(method: Method) -> int:
    """How many inputs a valid call has (the base included)."""
    fixed = {"slerp": 2, "nearswap": 2, "arcee_fusion": 2, "passthrough": 1, "nuslerp": 3, "model_stock": 4}
    return fixed.get(method.name, 4)


def _base_index(method: Method) -> int | None:
    # put the base second, not first, so code that assumes index 0 fails
    if method.base is BaseRule.IGNORED or method.name == "karcher":
        return None
    return 1 if _count(method) > 1 else 0


def _inputs(method: Method, shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    n = _count(method)
    base = torch.randn(shape, generator=gen)
    tensors = [(base + 0.05 * torch.randn(shape, generator=gen)).to(dtype) for _ in range(n)]
    bi = _base_index(method)
    if bi is not None:
        tensors[bi] = base.to(dtype)
    per_model: list[dict[str, Any]] = []
    for i in range(n):
        entry: dict[str, Any] = {}
        if method.param("weight") is not None and i != bi:
            entry["weight"] = 0.3 + 0.2 * i
        if method.param("density") is not None and i != bi:
            entry["density"] = 0.5
        per_model.append(entry)
    params = {"t": 0.4} if method.name in ("slerp",) else {}
    if method.name == "nearswap":
        params = {"t": 0.03}
    if method.name == "sce":
        params = {"select_topk": 0.5}
    return tensors, per_model, params, bi


def _run(method: Method, shape, dtype, seed: int = 0, gen_seed: int = 7) -> torch.Tensor:
    tensors, per_model, params, bi = _inputs(method, shape, dtype, seed)
    return apply_method(method, tensors, per_model, params, ctx(bi, gen_seed))


def test_registry_has_the_twenty_mergekit_methods():
    assert {n for n, m in METHODS.items() if not m.mergekit} == EXTENSIONS
    assert {n for n, m in METHODS.items() if m.mergekit} == {
        "linear",
        "slerp",
        "nuslerp",
        "multislerp",
        "karcher",
        "task_arithmetic",
        "ties",
        "dare_ties",
        "dare_linear",
        "breadcrumbs",
        "breadcrumbs_ties",
        "della",
        "della_linear",
        "sce",
        "ram",
        "ramplus_tl",
        "model_stock",
        "nearswap",
        "arcee_fusion",
        "passthrough",
    }


def test_unknown_method_suggests_a_name():
    with pytest.raises(ConfigError, match="did you mean 'dare_ties'"):
        get_method("dare-ties")


# a method's version goes up when its results change, so cached results of the old one go stale
VERSIONS = {"arcee_fusion": 3}  # scores on the CPU in the compute dtype: mergekit's mask on every device
# factorizations on one CPU thread: the same bits from a Ray task and a local build
VERSIONS |= {"tsv": 2, "iso_c": 2, "iso_cts": 2}
# computed in the inputs' dtype as mergekit 0.1.5 does (bf16 results equal mergekit's)
VERSIONS |= {
    name: 2
    for name in (
        "task_arithmetic",
        "ties",
        "dare_ties",
        "dare_linear",
        "breadcrumbs",
        "breadcrumbs_ties",
        "della",
        "della_linear",
        "sce",
        "model_stock",
        "nearswap",
    )
}
# the spherical methods step by step in the inputs' dtype, as mergekit 0.1.5 (bf16 bits equal)
VERSIONS |= {"karcher": 2, "nuslerp": 2, "multislerp": 2}
# slerp in chunks with float32 coefficient tensors, as mergekit 0.1.5 (bits equal, bounded scratch)
VERSIONS |= {"slerp": 2}


@pytest.mark.parametrize("name", NAMES)
def test_declaration(name: str):
    m = METHODS[name]
    assert m.name == name and m.version == VERSIONS.get(name, 1)
    assert m.reference.startswith("https://") and m.summary
    assert len({p.name for p in m.params}) == len(m.params)
    assert name in EMBED[m.embed]
    assert m.max_models is None or m.max_models >= m.min_models >= 1
    if m.stage is not None:
        assert name in STAGED
        assert set(m.stage.params) <= {p.name for p in m.params}
        assert not set(m.stage.params) & {"weight", "normalize", "lambda", "int8_mask"}
        assert m.stage.random == (name in RANDOM_STAGE)
    else:
        assert name not in STAGED


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_finite_deterministic(name: str, dtype: torch.dtype, shape):
    m = METHODS[name]
    out = _run(m, shape, dtype)
    assert out.shape == torch.Size(shape)
    assert out.dtype == dtype
    assert torch.isfinite(out.float()).all()
    assert torch.equal(out, _run(m, shape, dtype))


@pytest.mark.parametrize("name", NAMES)
def test_global_rng_is_never_used(name: str):
    m = METHODS[name]
    torch.manual_seed(1)
    a = _run(m, (16, 24), torch.float32)
    torch.manual_seed(2)
    b = _run(m, (16, 24), torch.float32)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(RANDOM_STAGE))
def test_random_stages_follow_the_seed(name: str):
    m = METHODS[name]
    a = _run(m, (16, 24), torch.float32, gen_seed=1)
    b = _run(m, (16, 24), torch.float32, gen_seed=2)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(STAGED))
def test_stage_outputs_are_reusable_across_weight_edits(name: str):
    """What the cache relies on: stage outputs computed under one weight serve another."""
    m = METHODS[name]
    assert m.stage is not None
    tensors, per_model, params, bi = _inputs(m, (16, 24), torch.float32)
    assert bi is not None
    staged = list(tensors)
    for i, x in enumerate(tensors):
        if i != bi:
            values = {p.name: p.default for p in m.params} | per_model[i]
            sp = {k: values[k] for k in m.stage.params}
            staged[i] = m.stage.fn(x, tensors[bi], sp, ctx(bi, 100 + i))
            assert name in PACKED_STAGE or (staged[i].shape == x.shape and staged[i].dtype == x.dtype)
    edited = [dict(e, weight=(e["weight"] * 3 if "weight" in e else None)) for e in per_model]
    full = [{p.name: p.default for p in m.model_params} | e for e in edited]
    glob = {p.name: p.default for p in m.global_params}
    again = list(tensors)
    for i, x in enumerate(tensors):
        if i != bi:
            sp = {k: ({p.name: p.default for p in m.params} | edited[i])[k] for k in m.stage.params}
            again[i] = m.stage.fn(x, tensors[bi], sp, ctx(bi, 100 + i))
    assert all(torch.equal(a, b) for a, b in zip(staged, again))
    assert torch.equal(m.merge(staged, full, glob, ctx(bi)), m.merge(again, full, glob, ctx(bi)))


@pytest.mark.parametrize("name", [n for n in NAMES if METHODS[n].base is BaseRule.REQUIRED])
def test_required_base_missing_is_a_clear_error(name: str):
    m = METHODS[name]
    tensors, per_model, params, _ = _inputs(m, (8,), torch.float32)
    filled = [{p.name: p.default for p in m.model_params} | e | {"weight": 1.0} for e in per_model]
    glob = {p.name: p.default for p in m.global_params} | params
    with pytest.raises(ConfigError, match="base"):
        m.merge(tensors, filled, glob, ctx(None))


@pytest.mark.parametrize("name", NAMES)
def test_a_single_input_is_returned_unchanged(name: str):
    m = METHODS[name]
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    bi = None if m.base is BaseRule.IGNORED else 0
    pm = [{"weight": 1.0}] if bi is None else [{}]
    params = {"t": 0.5} if m.param("t") is not None else {}
    assert torch.equal(apply_method(m, [x], pm, params, ctx(bi)), x)
