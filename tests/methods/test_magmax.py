"""MagMax on hand-built tensors: per entry the task vector of largest magnitude."""

from __future__ import annotations

import torch

from mergefile.methods.magmax import max_magnitude

from .helpers import run, t


def test_each_entry_takes_the_largest_magnitude_task_value():
    base = t(1.0, 1.0, 1.0, 1.0)
    a = base + t(0.5, -3.0, 0.0, 2.0)
    b = base + t(-2.0, 1.0, 0.25, -1.0)
    out = run("magmax", [base, a, b], params={"lambda": 1.0}, base_index=0)
    assert torch.equal(out, base + t(-2.0, -3.0, 0.25, 2.0))


def test_lambda_scales_the_selection_and_defaults_to_half():
    base = torch.zeros(3)
    a, b = t(4.0, -1.0, 0.0), t(1.0, -2.0, 6.0)
    assert torch.equal(run("magmax", [a, base, b], base_index=1), t(2.0, -1.0, 3.0))


def test_a_tie_goes_to_the_later_task():
    assert torch.equal(max_magnitude([t(1.0, -2.0), t(-1.0, 2.0)]), t(-1.0, 2.0))


def test_half_precision_in_base_dtype_out():
    base = torch.zeros(2, 2, dtype=torch.bfloat16)
    a = torch.tensor([[1.0, -4.0], [0.5, 0.0]], dtype=torch.bfloat16)
    out = run("magmax", [base, a], params={"lambda": 1.0}, base_index=0)
    assert out.dtype == torch.bfloat16 and torch.equal(out, a)
