"""slerp, karcher, nuslerp and multislerp give mergekit 0.1.5's bf16 tensors bit for bit.

mergekit computes these methods in the inputs' dtype, step by step (bf16 directions, means,
angles and sums; karcher's norms in float32); so does mergebuild (each method's version 2).
Two checks: the public corpus configs (tests/data/mergekit_corpus, outputs recorded by
``bench/mergekit_corpus.py``) built through the CLI, every tensor ``torch.equal``; and seeded
in-memory inputs against digests of mergekit's outputs for the same inputs (recorded by running
mergekit 0.1.5's kernels on CPU with torch 2.13, ``sha256`` of the bf16 bits, first 16 hex digits).
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from tests.corpus_env import CORPUS, offline_world
from tests.helpers import cli, read_tensors

from .helpers import run

CORPUS_CONFIGS = (
    "absa-german-karcher-karcher-default",
    "absa-german-nuslerp-50-50",
    "absa-german-slerp-slerp-balanced-blend",
    "absa-german-slerp-slerp-gradual-shift",
    "mergekit-gradient-slerp",
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    yield from offline_world(tmp_path_factory, "corpus-world")


@pytest.mark.parametrize("name", CORPUS_CONFIGS)
def test_corpus_config_equals_mergekit(world, name):
    from safetensors.torch import load_file

    want = {
        k.split("::", 1)[1]: v
        for k, v in load_file(str(CORPUS / "reference" / "tensors.safetensors")).items()
        if k.startswith(f"{name}::")
    }
    assert cli(world, "--config", str(CORPUS / f"{name}.yml"), f"out/{name}", cache=world / "cache") == 0
    got = read_tensors(world / "out" / name)
    assert sorted(got) == sorted(want) and len(want) > 100
    assert all(v.dtype in (torch.bfloat16, torch.float16) for v in want.values())  # not float32 math
    assert [k for k in want if not torch.equal(got[k], want[k])] == []


def _inputs(shape: tuple[int, ...]) -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    base = torch.randn(shape, generator=g) * 0.02
    xs = [(base + torch.randn(shape, generator=g) * 0.005).to(torch.bfloat16) for _ in range(3)]
    return xs, base.to(torch.bfloat16)


def _digest(x: torch.Tensor) -> str:
    assert x.dtype == torch.bfloat16
    return hashlib.sha256(x.contiguous().view(torch.int16).numpy().tobytes()).hexdigest()[:16]


# (method, shape, with base, params) -> mergekit 0.1.5's output digest for _inputs(shape)
MERGEKIT = {
    # slerp: t; "same" slerps the base to itself (the linear branch); (1100, 1024) is two chunks
    ("slerp", (64, 48), True, (0.3,)): "2412c9120c0407c9",
    ("slerp", (64, 48), True, (0.7,)): "194825ce75fae9ea",
    ("slerp", (64, 48), True, ("same",)): "1b938f6b3d4b6175",
    ("slerp", (48,), True, (0.3,)): "24a9513e3dc8ee04",
    ("slerp", (48,), True, (0.7,)): "ce3508cae6bac9f9",
    ("slerp", (48,), True, ("same",)): "d4f38eadd2d51d8a",
    ("slerp", (1100, 1024), True, (0.3,)): "b9f6d3362d4cd8c0",
    ("slerp", (1100, 1024), True, (0.7,)): "33deaf02947425fa",
    ("slerp", (1100, 1024), True, ("same",)): "9164fc0a1e11c70d",
    ("karcher", (64, 48), False, ()): "f854f165403ec330",
    ("karcher", (64, 48), True, ()): "78d23f6fa29a3cdc",
    ("karcher", (48,), False, ()): "d48c2dcea18407e3",
    ("karcher", (48,), True, ()): "3bd85eb634529acc",
    ("nuslerp", (64, 48), False, (True, False)): "d408c992658b428c",
    ("nuslerp", (64, 48), True, (True, False)): "c7648ef950078637",
    ("nuslerp", (64, 48), False, (False, False)): "874698fb4e5e2fab",
    ("nuslerp", (64, 48), True, (False, False)): "fd33d66dc99d19e4",
    ("nuslerp", (64, 48), False, (False, True)): "75f5eff9e6994a24",
    ("nuslerp", (64, 48), True, (False, True)): "bf805b7acea54a95",
    ("nuslerp", (48,), False, (True, False)): "efae220011457ba0",
    ("nuslerp", (48,), True, (True, False)): "1e419fdb1d1aaf6c",
    ("multislerp", (64, 48), False, ()): "c461d2ea7ad96cd9",
    ("multislerp", (64, 48), True, ()): "5eda154f7f4653dd",
    ("multislerp", (48,), False, ()): "5b34797105eb4a06",
    ("multislerp", (48,), True, ()): "3cbf436ad51ed1a0",
}


@pytest.mark.parametrize("case", sorted(MERGEKIT, key=str), ids=str)
def test_bf16_kernel_equals_mergekit(case):
    method, shape, with_base, extra = case
    xs, base = _inputs(shape)
    if method == "slerp":
        (t,) = extra
        other = base if t == "same" else xs[0]
        out = run("slerp", [base, other], [{}, {}], {"t": 0.3 if t == "same" else t}, base_index=0)
    elif method == "karcher":  # mergekit: every input (the base too) one point, weights 1/n
        tensors = [base, *xs[:2]] if with_base else xs
        out = run("karcher", tensors, [{} for _ in tensors])
    elif method == "nuslerp":
        flatten, row_wise = extra
        params = {"nuslerp_flatten": flatten, "nuslerp_row_wise": row_wise}
        pm = [{"weight": 0.4}, {"weight": 0.6}]
        if with_base:
            out = run("nuslerp", [base, *xs[:2]], [{}, *pm], params, base_index=0)
        else:
            out = run("nuslerp", xs[:2], pm, params)
    else:
        if with_base:
            out = run("multislerp", [base, *xs[:2]], [{}, {"weight": 1.0}, {"weight": 2.0}], base_index=0)
        else:
            out = run("multislerp", xs, [{"weight": w} for w in (1.0, 2.0, 3.0)])
    assert _digest(out) == MERGEKIT[case]


def test_float32_accumulation_would_not_match():
    """The digests tell the semantics apart: karcher in float32, rounded once, is another tensor."""
    xs, _ = _inputs((64, 48))
    out = run("karcher", [x.float() for x in xs], [{} for _ in xs]).to(torch.bfloat16)
    assert _digest(out) != MERGEKIT[("karcher", (64, 48), False, ())]
