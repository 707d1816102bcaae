"""MoE router weights as mergekit 0.1.5's ``mergekit-moe`` makes them (CPU): bit for bit, but for
the last bits of forward-pass routers, which are the recording CPU's (``CPU_ULPS`` below).

The world is the public corpus's (``tests/corpus_env.py``). ``mergekit-docs-moe-hermes`` is the
corpus config (``gate_mode: hidden``, bf16; mergekit's tensors in the corpus reference); the
variants in ``tests/data/mergekit_moe_gates`` add ``hidden_avg``, ``cheap_embed``, negative
prompts and a float32 output. Their routers were recorded from mergekit 0.1.5 in the same world,
with mergekit's virtualenv (``bench/mergekit_corpus.py``'s ``_run`` and ``_offline_listing``)::

    .venv/bin/python -m tests.corpus_env /tmp/world
    # for each variant: mergekit-moe VARIANT.yml /tmp/world/mk-out/NAME --random-seed 0 (cwd /tmp/world)
    # gates.safetensors: every output's ``*.mlp.gate.weight`` as ``NAME::TENSOR``
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.corpus_env import CORPUS, offline_world
from tests.helpers import cli, read_tensors

VARIANTS = Path(__file__).resolve().parents[1] / "data" / "mergekit_moe_gates"
HERMES = "mergekit-docs-moe-hermes"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    yield from offline_world(tmp_path_factory, "moe-gates-world")


def _recorded(path: Path, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k.split("::", 1)[1]: v for k, v in load_file(str(path)).items() if k.startswith(name + "::")}


def _routers(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tensors.items() if k.endswith(".mlp.gate.weight")}


# ``hidden`` and ``hidden_avg`` routers are a forward pass's hidden states: the recording's last
# bits are its CPU's (see tests/syntax/test_mergekit_public_corpus.py, FORWARD_PASS). On another
# CPU they may differ by a few ulp — mergekit's own do, by up to 4 on the 2026-12 CI machine,
# where mergebuild's equal mergekit's run live bit for bit. Every other gate mode is exact.
CPU_ULPS = 4


def _off(got: dict, want: dict, hidden: bool) -> list[str]:
    """Routers that differ from the recording beyond what the CPU explains."""
    from tests.syntax.test_mergekit_public_corpus import ulps

    def far(a, b) -> int:  # hidden states are the world's bf16, whatever dtype the routers are written in
        return ulps(a.to(torch.bfloat16), b.to(torch.bfloat16)) if hidden else int(not torch.equal(a, b))

    allowed = CPU_ULPS if hidden else 0
    return [k for k in want if got[k].dtype != want[k].dtype or far(got[k], want[k]) > allowed]


def test_hidden_gates_equal_mergekit_for_the_corpus_config(world):
    want = _recorded(CORPUS / "reference" / "tensors.safetensors", HERMES)
    assert cli(world, "--config", str(CORPUS / f"{HERMES}.yml"), f"out/{HERMES}", cache=world / "cache") == 0
    got = read_tensors(world / "out" / HERMES)
    gates = _routers(want)
    assert sorted(gates) == [f"model.layers.{i}.mlp.gate.weight" for i in range(4)]
    assert _off(got, gates, hidden=True) == []
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want if k not in gates)


@pytest.mark.parametrize("variant", sorted(p.stem for p in VARIANTS.glob("*.yml")))
def test_gate_modes_equal_mergekit(world, variant):
    want = _recorded(VARIANTS / "gates.safetensors", variant)
    assert len(want) == 4
    assert cli(world, "--config", str(VARIANTS / f"{variant}.yml"), f"out/{variant}", cache=world / "cache") == 0
    got = _routers(read_tensors(world / "out" / variant))
    assert sorted(got) == sorted(want)
    assert _off(got, want, hidden="hidden" in variant) == []
