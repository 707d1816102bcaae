"""Singular-value helpers for the spectral methods (tsv, iso_c, iso_cts).

Everything is float32 (or float64 when given) and device-agnostic: the same calls run on a CUDA
tensor. Randomized SVD draws its test matrix on CPU from the method context's generator, so a CPU
and a CUDA build of the same node start from the same numbers and the global RNG is never used.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from mergefile._lazy import torch

# Randomized SVD (Halko, Martinsson & Tropp 2011, §4.4): test vectors beyond the rank asked for
# (half of it, at least 8) and power iterations. Measured on a Gaussian 8000 x 512 matrix, whose
# flat spectrum is the worst case, the top 128 singular values come within 3% of the exact ones
# (4 iterations); a low-rank update plus noise (tests/methods/test_tsv.py) within 0.1%.
OVERSAMPLE = 8
POWER_ITERS = 4
# below this share of the rank the randomized SVD pays; above it the exact one costs as little
RANDOMIZED_SHARE = 0.25


_T = TypeVar("_T")
# MKL's SVD and QR give different bits at different thread counts (a Ray task has one thread, a
# local build as many as cores), so on the CPU they always run on one thread. The thread count
# is partly process-wide (MKL's), hence one lock: while a factorization runs, no other thread
# can raise it; other threads' matmuls only run slower meanwhile, never differently.
_ONE_THREAD = threading.Lock()


@contextmanager
def _one_thread(t: torch.Tensor) -> Iterator[None]:
    if t.device.type != "cpu":
        yield
        return
    with _ONE_THREAD:
        saved = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(saved)


def _pinned(f: Callable[[torch.Tensor], _T], m: torch.Tensor) -> _T:
    with _one_thread(m):
        return f(m)


def svd(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``torch.linalg.svd(m, full_matrices=False)``, the same bits on every executor.

    LAPACK's float32 divide-and-conquer SVD gives up on some ill-conditioned matrices (many
    repeated singular values: seen on a sum of random-init task matrices); those are factored
    again in float64, which converges, and returned in ``m``'s dtype. A given matrix always takes
    the same path (one thread, same input), so the result is still deterministic.
    """

    def factor(x: torch.Tensor):
        try:
            return torch.linalg.svd(x, full_matrices=False)
        except torch.linalg.LinAlgError:
            if x.dtype == torch.float64:
                raise
            u, s, vh = torch.linalg.svd(x.to(torch.float64), full_matrices=False)
            return u.to(x.dtype), s.to(x.dtype), vh.to(x.dtype)

    u, s, vh = _pinned(factor, m)
    return u, s, vh


def orthonormal_basis(m: torch.Tensor) -> torch.Tensor:
    """The ``Q`` of a reduced QR of ``m``, the same bits on every executor."""
    return _pinned(lambda x: torch.linalg.qr(x).Q, m)


def thin_svd(m: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top ``k`` singular triplets ``(U, S, Vh)`` of ``m`` from an exact thin SVD."""
    u, s, vh = svd(m)
    return u[:, :k], s[:k], vh[:k, :]


def randomized_svd(
    m: torch.Tensor, k: int, gen: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Approximate top-``k`` triplets of ``m`` at ``O(mnk)`` cost: why embeddings can be SVD'd.

    The exact SVD of a vocab x hidden matrix costs ``O(m n^2)``; a range finder of ``1.5 k``
    columns costs ``O(m n k)``. Falls back to the exact SVD unless ``k`` is at most
    ``RANDOMIZED_SHARE`` of the rank: with more, a randomized SVD costs as much (measured).
    """
    rows, cols = m.shape
    q = k + max(OVERSAMPLE, k // 2)
    if k > RANDOMIZED_SHARE * min(rows, cols) or q >= min(rows, cols):
        return thin_svd(m, k)
    if gen is None:
        gen = torch.Generator().manual_seed(0)
    omega = torch.randn((cols, q), generator=gen, dtype=torch.float32).to(device=m.device, dtype=m.dtype)
    basis = orthonormal_basis(m @ omega)
    for _ in range(POWER_ITERS):
        basis = orthonormal_basis(m.T @ basis)
        basis = orthonormal_basis(m @ basis)
    ub, s, vh = svd(basis.T @ m)
    return (basis @ ub)[:, :k], s[:k], vh[:k, :]


def polar(a: torch.Tensor) -> torch.Tensor:
    """The orthogonal factor ``P Q^T`` of ``a = P D Q^T``: the nearest matrix with orthonormal columns (or rows)."""
    p, _, qh = svd(a)
    return p @ qh


def pack(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor) -> torch.Tensor:
    """``(U, S, Vh)`` of rank k as one ``(k, m + 1 + n)`` tensor: row j is ``[U[:, j], S[j], Vh[j]]``."""
    return torch.cat([u.T, s.unsqueeze(1), vh], dim=1).contiguous()


def unpack(packed: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`pack` for a matrix with ``rows`` rows."""
    return packed[:, :rows].T, packed[:, rows], packed[:, rows + 1 :]
