"""Differential tests: the issue-19 methods against FusionBench's implementations (PCB: the paper's).

The reference outputs were recorded by ``bench/new_methods_reference.py`` in a throwaway
FusionBench virtualenv (see its docstring) into ``tests/data/new_methods_reference.safetensors``;
this test needs no FusionBench. Inputs: a 24 x 16 and a 12 x 20 matrix and a 16-entry vector, three tasks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .helpers import run

DATA = load_file(str(Path(__file__).resolve().parent.parent / "data" / "new_methods_reference.safetensors"))
TASKS = 3
# the reference's parameters (bench/new_methods_reference.py), spelled as mergebuild's
PARAMS = {
    "magmax": {},
    "tsv": {},
    "iso_c": {},
    "iso_cts": {"common_space_fraction": 0.8},
    "consensus_ta": {"k": 2, "mask_lambda": 0.6},
    "consensus_ties": {"k": 2, "mask_lambda": 0.6},
    "pcb": {"pcb_ratio": 0.1},
    "wudi": {"iterations": 300},
}


@pytest.mark.parametrize("key", ["W", "V", "b"])
@pytest.mark.parametrize("method", sorted(PARAMS))
def test_matches_fusionbench(method: str, key: str):
    tensors = [DATA[f"base.{key}"]] + [DATA[f"task{t}.{key}"] for t in range(TASKS)]
    out = run(method, tensors, params=PARAMS[method], base_index=0)
    ref = DATA[f"{method}.{key}"]
    assert not torch.equal(ref, DATA[f"base.{key}"])  # the reference did merge something
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
