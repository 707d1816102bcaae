"""LoRA extraction's tensor math and the PEFT adapter folder it writes (reference §8).

The math is a hidden merge method, ``lora:extract``, over two inputs (fine-tune, base). Its
cached *stage* is the truncated SVD of one module's delta, keyed by (fine-tune key, base key,
rank, sv_epsilon, distribute_scale, transpose): the jobs for ``lora_A`` and ``lora_B`` of a module
are two output tensors sharing that stage, so the SVD runs once per module and changing one
module's rank recomputes exactly that module.

The folder is ``adapter_model.safetensors`` (one file, PEFT names) and ``adapter_config.json``,
whose ranks (``r``, ``rank_pattern``, ``alpha_pattern``) are read back from the written tensors:
with ``sv_epsilon`` a module's rank depends on its singular values, which planning never sees.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergefile._lazy import torch
from mergefile.methods._svd import svd
from mergefile.methods.base import BaseRule, EmbedPolicy, MergeContext, Method, ParamSpec, Stage

__all__ = ["ADAPTER_WEIGHTS", "AdapterLayout", "METHOD", "PREFIX"]

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PREFIX = "base_model.model."
STAGE_PARAMS = ("rank", "sv_epsilon", "distribute_scale", "transpose")


def svd_factors(x: torch.Tensor, base: torch.Tensor, params: Mapping[str, Any], ctx: MergeContext) -> torch.Tensor:
    """The stage: factors of ``x - base`` packed as one ``(r, out + in)`` float32 tensor ``[Bᵀ | A]``.

    ``B @ A`` is the best rank-r approximation of the delta (of its transpose for embeddings).
    r = min(rank, #singular values), further cut to the singular values above ``sv_epsilon``
    (at least 1). With ``distribute_scale`` each factor carries √s, else A carries s. A 1-D
    tensor (a bias) has no factors: its stage is the plain delta.
    """
    delta = x.float() - base.float()
    if delta.ndim == 1:
        return delta
    if params["transpose"]:
        delta = delta.T
    u, s, vh = svd(delta)
    rank = min(int(params["rank"]), s.numel())
    eps = float(params["sv_epsilon"])
    if eps > 0:
        rank = max(1, min(rank, int((s > eps).sum())))
    s = s[:rank]
    if params["distribute_scale"]:
        root = s.sqrt()
        a, b = root[:, None] * vh[:rank], u[:, :rank] * root[None, :]
    else:
        a, b = s[:, None] * vh[:rank], u[:, :rank]
    return torch.cat([b.T, a], dim=1).contiguous()


def _part(tensors: Sequence[torch.Tensor], per_model, params: Mapping[str, Any], ctx: MergeContext) -> torch.Tensor:
    """One output tensor from the stage: ``A``, ``B``, ``bias`` (a delta) or ``full`` (a copy)."""
    part = params["part"]
    if part == "full":
        return tensors[0]
    packed, base = tensors[0], tensors[ctx.base_index]
    if part == "bias":
        return packed.to(base.dtype)
    rows = base.shape[1] if params["transpose"] else base.shape[0]
    factor = packed[:, rows:] if part == "A" else packed[:, :rows].T
    return factor.to(base.dtype).contiguous()


METHOD = Method(
    name="lora:extract",
    version=2,  # 2: factorizations on one CPU thread (the same bits on Ray)
    reference="https://arxiv.org/abs/2106.09685 (LoRA); mergekit-extract-lora",
    params=(
        ParamSpec("part", "A", type=str, doc="A, B, bias or full"),
        ParamSpec("rank", 0, type=int),
        ParamSpec("sv_epsilon", 0.0),
        ParamSpec("distribute_scale", True, type=bool),
        ParamSpec("transpose", False, type=bool, doc="decompose the transposed delta (embeddings)"),
    ),
    merge=_part,
    base=BaseRule.REQUIRED,
    min_models=1,
    max_models=2,
    embed=EmbedPolicy.EXACT,
    stage=Stage("svd", STAGE_PARAMS, svd_factors),
    summary="LoRA extraction: truncated SVD of the fine-tune's delta per module",
)


@dataclass(frozen=True)
class AdapterLayout:
    """How ``publish`` writes a PEFT adapter folder instead of a model folder.

    Args:
        config: ``adapter_config.json`` without its ranks (the plan's config; keyed as aux).
        modules: LoRA modules (full names) and whether each is an embedding, for the ranks.
        card: the README text.
    """

    config: dict
    modules: tuple[tuple[str, bool], ...]
    card: str
    dynamic_shapes: bool = True  # tensor shapes are known once computed (sv_epsilon)

    def write_files(self, folder: Path, config: dict) -> None:
        from mergefile.io.header import read_header
        from mergefile.io.writer import _atomic_write_bytes

        infos, _ = read_header(folder / ADAPTER_WEIGHTS)
        ranks = {}
        for name, embed in self.modules:
            a = f"{PREFIX}{name}.lora_embedding_A" if embed else f"{PREFIX}{name}.lora_A.weight"
            ranks[name] = int(infos[a].shape[0])
        text = json.dumps(adapter_config(self.config, ranks), indent=2, sort_keys=True) + "\n"
        _atomic_write_bytes(folder / ADAPTER_CONFIG, text.encode("utf-8"))

    def card_texts(self, plan) -> dict[str, str]:
        return {"README.md": self.card}


def adapter_config(static: Mapping[str, Any], ranks: Mapping[str, int]) -> dict[str, Any]:
    """The PEFT config: ``r`` = the largest rank, alpha = rank (scale 1), patterns for the rest."""
    r = max(ranks.values())
    pattern = {m: k for m, k in sorted(ranks.items()) if k != r}
    return {**static, "r": r, "lora_alpha": r, "rank_pattern": pattern, "alpha_pattern": dict(pattern)}


def card(
    name: str, finetuned: str, base: str, options: Mapping[str, Any], recipe: str | None, base_hub: str | None = None
) -> str:
    """A short model card for the adapter (``base_model`` only when the base is a Hub id)."""
    opts = "\n".join(f"- `{k}`: `{v}`" for k, v in options.items())
    lines = [
        "---",
        *([f"base_model: {base_hub}"] if base_hub else []),
        "library_name: peft",
        "tags:",
        "- mergebuild",
        "- lora",
        "---",
        f"# {name}",
        "",
        f"A LoRA adapter extracted by mergebuild from **{finetuned}** "
        f"relative to **{base}**: per module, a truncated SVD of the difference of the weights.",
        "",
        "```python",
        "from peft import PeftModel",
        "model = PeftModel.from_pretrained(base_model, PATH)",
        "```",
        "",
        "## Options",
        "",
        opts,
    ]
    if recipe:
        lines += ["", "## Recipe", "", "```", recipe.strip(), "```"]
    return "\n".join(lines) + "\n"
