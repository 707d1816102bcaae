"""CPU and CUDA builds of the same node agree (random masks are drawn on CPU)."""

from __future__ import annotations

import pytest
import torch

from mergefile.methods import METHODS, apply_method

from .helpers import ctx
from .test_contract import NAMES, _inputs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("name", NAMES)
def test_cpu_and_cuda_agree(name: str):
    m = METHODS[name]
    tensors, per_model, params, bi = _inputs(m, (64, 48), torch.float32)
    cpu = apply_method(m, tensors, per_model, params, ctx(bi, 5))
    gpu = apply_method(m, [x.cuda() for x in tensors], per_model, params, ctx(bi, 5))
    assert gpu.device.type == "cuda" and gpu.dtype == cpu.dtype
    # a different random mask would differ by whole task-vector entries, far beyond this
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-5, rtol=1e-4)
