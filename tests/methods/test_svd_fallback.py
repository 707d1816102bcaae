"""An SVD that LAPACK's float32 solver gives up on is factored again in float64."""

from __future__ import annotations

import pytest
import torch

from mergefile.methods import _svd


def test_svd_retries_in_float64_when_float32_does_not_converge(monkeypatch):
    real = torch.linalg.svd
    seen: list[torch.dtype] = []

    def flaky(x, full_matrices=True):
        seen.append(x.dtype)
        if x.dtype == torch.float32:
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")
        return real(x, full_matrices=full_matrices)

    m = torch.randn(12, 7, generator=torch.Generator().manual_seed(3))
    monkeypatch.setattr(torch.linalg, "svd", flaky)
    u, s, vh = _svd.svd(m)
    assert seen == [torch.float32, torch.float64]
    assert u.dtype == s.dtype == vh.dtype == torch.float32 and u.shape == (12, 7) and vh.shape == (7, 7)
    assert torch.allclose(u @ torch.diag(s) @ vh, m, atol=1e-5)
    assert torch.allclose(_svd.polar(m), (u @ vh), atol=0)


def test_a_float64_failure_is_not_swallowed(monkeypatch):
    def never(x, full_matrices=True):
        raise torch.linalg.LinAlgError("no")

    monkeypatch.setattr(torch.linalg, "svd", never)
    with pytest.raises(torch.linalg.LinAlgError):
        _svd.svd(torch.eye(3, dtype=torch.float64))
