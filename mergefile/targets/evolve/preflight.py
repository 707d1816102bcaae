"""Checks before a search starts: what its options need (CUDA, bitsandbytes, wandb) is there.

A missing piece becomes one clear error (exit 2) before any model is read or Ray is started,
instead of a traceback from a Ray worker an hour into the search. The decisions are pure
functions of what is available, so every combination is testable on any machine;
:func:`preflight` feeds them the real machine.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from mergefile.errors import UserError

__all__ = ["QUANTIZATIONS", "merge_device", "preflight", "quantization_problem", "require_wandb"]

QUANTIZATIONS = ("8bit", "4bit")  # --load-in-8bit, --load-in-4bit (bitsandbytes)


def _cuda_available() -> bool:
    from mergefile._lazy import torch

    return bool(torch.cuda.is_available())


def merge_device(device: str, merge_cuda: bool | None, cuda_available: bool) -> str:
    """Where candidates are merged: ``--merge-cuda`` on the GPU, ``--no-merge-cuda`` on the CPU,
    neither: where they are evaluated (``--device``).

    ``--merge-cuda`` keeps the GPU index of ``--device cuda:N``; with ``--device cpu`` it means
    the (Ray-assigned or first) GPU, ``cuda``.

    Raises:
        UserError: ``--merge-cuda`` without a CUDA device.
    """
    if merge_cuda is None:
        return device
    if not merge_cuda:
        return "cpu"
    if not cuda_available:
        raise UserError(
            "--merge-cuda needs a CUDA device, and none is available",
            hint="merge on the CPU: leave --merge-cuda out (or pass --no-merge-cuda)",
        )
    return device if device.startswith("cuda") else "cuda"


def quantization_problem(
    quantization: str | None, device: str, vllm: bool, cuda_available: bool, has_bitsandbytes: bool
) -> str | None:
    """Why ``--load-in-8bit``/``--load-in-4bit`` cannot run here, or None when it can.

    bitsandbytes quantizes on load, for the hf backend, on a CUDA device.
    """
    if quantization is None:
        return None
    flag = f"--load-in-{quantization}"
    if quantization not in QUANTIZATIONS:
        return f"unknown quantization '{quantization}' (use 8bit or 4bit)"
    if vllm:
        return f"{flag} quantizes the hf backend's model with bitsandbytes; it does not go with --vllm"
    if not has_bitsandbytes:
        return f"{flag} needs bitsandbytes: pip install bitsandbytes"
    if not cuda_available:
        return f"{flag} needs a CUDA device (bitsandbytes quantizes on the GPU), and none is available"
    if not device.startswith("cuda"):
        return f"{flag} evaluates on the GPU: add --device cuda"
    return None


def require_wandb() -> Any:
    """The ``wandb`` module (imported only when ``--wandb`` is given).

    Raises:
        UserError: wandb is not installed.
    """
    try:
        import wandb
    except ImportError:
        raise UserError("--wandb needs the wandb package: pip install wandb (or 'mergebuild[evolve]')") from None
    return wandb


def preflight(options) -> str:
    """Check an :class:`~mergefile.targets.evolve.search.EvolveOptions` against this machine.

    Returns:
        The merge device.

    Raises:
        UserError: a device, quantization or wandb option this machine cannot honour.
    """
    cuda = None

    def has_cuda() -> bool:
        nonlocal cuda
        if cuda is None:
            cuda = _cuda_available()
        return cuda

    if options.device != "cpu" and not options.device.startswith("cuda"):
        raise UserError(f"unknown device '{options.device}' (use cpu or cuda)")
    if options.device.startswith("cuda") and not has_cuda():
        raise UserError(f"--device {options.device} requested but no CUDA device is available")
    device = merge_device(options.device, options.merge_cuda, has_cuda() if options.merge_cuda else False)
    if options.quantization is not None:
        has_bnb = importlib.util.find_spec("bitsandbytes") is not None
        problem = quantization_problem(options.quantization, options.device, options.vllm, has_cuda(), has_bnb)
        if problem:
            raise UserError(problem)
    if options.wandb:
        require_wandb()
    return device
