"""``--load-in-8bit`` / ``--load-in-4bit``: the evaluated model is quantized with bitsandbytes.

Only evaluation is quantized: candidates are merged (and cached, and written) at full precision,
then loaded as transformers loads a checkpoint with a ``BitsAndBytesConfig``. For ``--in-memory``
the resident model is loaded quantized once, and each candidate's weights are quantized into it
the way transformers quantizes them on load (:func:`requantize`), so a candidate scores the same
in memory as from its folder. transformers and bitsandbytes are imported inside functions.
"""

from __future__ import annotations

from typing import Any

__all__ = ["bnb_config", "quantized_linears", "requantize"]


def bnb_config(quantization: str):
    """The ``BitsAndBytesConfig`` of ``8bit`` (LLM.int8) or ``4bit`` (NF4, double quantization,
    bfloat16 compute: the usual QLoRA setting)."""
    from transformers import BitsAndBytesConfig

    from mergefile._lazy import torch

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    raise ValueError(f"unknown quantization {quantization!r}")


def quantized_linears(model) -> dict[str, Any]:
    """``parameter name -> module`` of every bitsandbytes linear layer's weight in ``model``."""
    import bitsandbytes as bnb

    return {
        f"{name}.weight" if name else "weight": m
        for name, m in model.named_modules()
        if isinstance(m, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit))
    }


def _conv1d(module) -> bool:
    """A layer that replaced a GPT-2 style ``Conv1D`` (weight stored transposed)."""
    from transformers.pytorch_utils import Conv1D

    source = getattr(module, "source_cls", None)
    return isinstance(source, type) and issubclass(source, Conv1D)


def weight_shape(module) -> tuple[int, int]:
    """The full-precision weight shape a bitsandbytes linear layer stands for."""
    if _conv1d(module):
        return (module.in_features, module.out_features)
    return (module.out_features, module.in_features)


def requantize(module, tensor) -> None:
    """Quantize ``tensor`` (a full-precision weight) into the bitsandbytes layer ``module``.

    Mirrors transformers' loading (``integrations/bitsandbytes.py``): a new ``Int8Params`` /
    ``Params4bit`` with the layer's settings, quantized by moving it to the layer's device.
    """
    import bitsandbytes as bnb

    old = module.weight
    device = old.device
    value = (tensor.T if _conv1d(module) else tensor).detach()
    if isinstance(module, bnb.nn.Linear8bitLt):
        module.weight = bnb.nn.Int8Params(value.to("cpu").contiguous(), requires_grad=False, has_fp16_weights=False).to(
            device
        )
        module.state.CB = module.state.SCB = None  # the next forward takes them from the new weight
    elif isinstance(module, bnb.nn.Linear4bit):
        new = bnb.nn.Params4bit(
            value.to(device).contiguous(),
            requires_grad=False,
            blocksize=old.blocksize,
            compress_statistics=old.compress_statistics,
            quant_type=old.quant_type,
            quant_storage=old.quant_storage,
            module=module,
        )
        module.weight = new.to(device)
    else:  # pragma: no cover - quantized_linears only yields the two kinds
        raise TypeError(f"not a bitsandbytes linear layer: {type(module).__name__}")
