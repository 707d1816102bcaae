"""MoE output architectures: which dense inputs each takes, its config, its tensor names.

Experts are written in the transformers-v5 fused layout (checked against the installed
transformers by instantiating each config class in the tests): per layer ``mlp.gate.weight``
``(E, H)``, ``mlp.experts.gate_up_proj`` ``(E, 2I, H)`` (each expert's gate_proj rows, then its
up_proj rows) and ``mlp.experts.down_proj`` ``(E, H, I)``; Qwen2-MoE adds a dense
``mlp.shared_expert.*`` and ``mlp.shared_expert_gate.weight`` ``(1, H)``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ARCHS", "MoeArch", "pick_arch"]

# Keys of a dense config that mean nothing (or something wrong) in the MoE config.
_DROP = (
    "architectures",
    "model_type",
    "auto_map",
    "pretraining_tp",
    "mlp_bias",
    "_name_or_path",
    "transformers_version",
)


@dataclass(frozen=True)
class MoeArch:
    """One output architecture.

    Args:
        name: the recipe's word (``architecture=...``, prefix-matched like mergekit).
        model_type, architecture: what config.json says.
        inputs: model_types of dense models it takes.
        shared: number of shared experts it needs (0 or 1).
        experts_key: the config key of the expert count.
    """

    name: str
    model_type: str
    architecture: str
    inputs: tuple[str, ...]
    shared: int
    experts_key: str

    def config(
        self,
        base: Mapping[str, Any],
        experts: int,
        per_token: int,
        inter: int,
        shared_inter: int | None,
        qkv_bias: bool,
    ) -> dict[str, Any]:
        """config.json of the output, from the base's."""
        out = {k: copy.deepcopy(v) for k, v in base.items() if k not in _DROP}
        out.update(architectures=[self.architecture], model_type=self.model_type, num_experts_per_tok=per_token)
        out[self.experts_key] = experts
        out["output_router_logits"] = False
        out["router_aux_loss_coef"] = 0.001
        if self.model_type == "mixtral":
            out.pop("attention_bias", None)
            out.update(intermediate_size=inter, router_jitter_noise=0.0)
        else:
            out.update(moe_intermediate_size=inter, intermediate_size=inter, decoder_sparse_step=1, mlp_only_layers=[])
        if self.model_type == "qwen2_moe":
            out.pop("attention_bias", None)
            out.update(
                shared_expert_intermediate_size=shared_inter,
                qkv_bias=qkv_bias,
                norm_topk_prob=False,
                use_sliding_window=bool(base.get("use_sliding_window", False)),
            )
        if self.model_type == "qwen3_moe":
            out.update(norm_topk_prob=True, attention_bias=bool(base.get("attention_bias", False)))
        return out


ARCHS: dict[str, MoeArch] = {
    a.name: a
    for a in (
        MoeArch("mixtral", "mixtral", "MixtralForCausalLM", ("llama", "mistral"), 0, "num_local_experts"),
        MoeArch("qwen2_moe", "qwen2_moe", "Qwen2MoeForCausalLM", ("llama", "mistral", "qwen2"), 1, "num_experts"),
        MoeArch("qwen3_moe", "qwen3_moe", "Qwen3MoeForCausalLM", ("qwen3",), 0, "num_experts"),
    )
}
# mergekit's output architectures by display name; ``architecture:`` is a case-insensitive
# prefix of one (mergekit ``select_output_arch``). None: not built by mergebuild yet.
DISPLAY_NAMES: dict[str, str | None] = {
    "Mixtral": "mixtral",
    "Qwen MoE": "qwen2_moe",
    "Qwen3 MoE": "qwen3_moe",
    "DeepSeek MoE": None,
}


def _why_not(arch: MoeArch, model_type: str, shared: int) -> str | None:
    if model_type not in arch.inputs:
        return f"{arch.name} takes {'/'.join(arch.inputs)} experts, not {model_type}"
    if arch.shared != shared:
        return f"{arch.name} needs exactly {arch.shared} shared expert(s), got {shared}"
    return None


def _named(word: str) -> list[str | None]:
    """Architectures whose mergekit display name (or mergebuild name) starts with ``word``."""
    shown = [a for n, a in DISPLAY_NAMES.items() if n.lower().startswith(word)]
    ours = [n for n in ARCHS if n.startswith(word.replace(" ", "_").replace("-", "_"))]
    return list(dict.fromkeys(shown + ours))


def pick_arch(requested: str, model_type: str, shared: int) -> MoeArch | str:
    """The output architecture, or a sentence saying why none fits.

    ``requested`` is ``auto`` or a case-insensitive prefix of a mergekit display name ("Mixtral",
    "Qwen MoE", "Qwen3 MoE", "DeepSeek MoE") or of a mergebuild name; as in mergekit, of the
    matching architectures that take these experts Mixtral wins, else the first. ``auto``
    picks Mixtral for llama/mistral inputs without shared experts, Qwen2-MoE with one,
    Qwen3-MoE for qwen3 inputs.
    """
    word = requested.strip().lower()
    if word in ("", "auto"):
        fits = [a for a in ARCHS.values() if model_type in a.inputs and a.shared == shared]
        if not fits:
            return f"no MoE architecture takes {model_type} experts with {shared} shared expert(s)"
        return fits[0]
    named = _named(word)
    if not named:
        return f"unknown MoE architecture '{requested}' (known: {', '.join(DISPLAY_NAMES)})"
    built = [ARCHS[n] for n in named if n is not None]
    fits = [a for a in built if _why_not(a, model_type, shared) is None]
    if fits:
        return next((a for a in fits if a.name == "mixtral"), fits[0])
    if not built:
        return f"'{requested}' names DeepSeek MoE, which mergebuild does not build yet (known: mixtral, qwen2_moe, qwen3_moe)"
    return "; ".join(_why_not(a, model_type, shared) or "" for a in built)


def mlp_names(prefix: str, layer: int) -> dict[str, str]:
    """Dense MLP tensor names of one layer (llama/mistral/qwen2/qwen3 naming)."""
    return {p: f"{prefix}.{layer}.mlp.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj")}


def moe_names(prefix: str, layer: int) -> dict[str, str]:
    """MoE tensor names of one output layer."""
    mlp = f"{prefix}.{layer}.mlp"
    return {
        "router": f"{mlp}.gate.weight",
        "gate_up": f"{mlp}.experts.gate_up_proj",
        "down": f"{mlp}.experts.down_proj",
        "shared_gate": f"{mlp}.shared_expert_gate.weight",
        **{f"shared_{p}": f"{mlp}.shared_expert.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj")},
    }
