"""The output folder of a ``moe`` target: a Hugging Face model folder plus its recipe.

Besides ``config.json`` (written by publish from the plan) it holds a model card and
``mergekit_moe_config.yml``, the recipe as a mergekit-moe config (as mergekit-moe writes it), so
the model can be rebuilt with either tool.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mergefile.syntax.ast import Target

__all__ = ["MoeLayout", "moe_yaml_text"]

MOE_CONFIG = "mergekit_moe_config.yml"


def _expert(label: str, v: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"source_model": label}
    if v["prompts"]:
        out["positive_prompts"] = list(v["prompts"])
    if v["negative"]:
        out["negative_prompts"] = list(v["negative"])
    if v["noise_scale"]:
        out["noise_scale"] = v["noise_scale"]
    if v["residual_scale"] != 1:
        out["residual_scale"] = v["residual_scale"]
    return out


def moe_yaml_text(
    base: str,
    gate_mode: str,
    per_token: int,
    arch: str,
    dtype: str | None,
    experts: Sequence[tuple[str, dict]],
    shared: Sequence[tuple[str, dict]],
) -> str:
    """A mergekit-moe config for this recipe (model names are the recipe's labels)."""
    doc: dict[str, Any] = {"base_model": base, "gate_mode": gate_mode, "architecture": arch}
    if dtype:
        doc["dtype"] = dtype
    doc["experts_per_token"] = per_token
    doc["experts"] = [_expert(label, v) for label, v in experts]
    if shared:
        doc["shared_experts"] = [_expert(label, v) for label, v in shared]
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


@dataclass(frozen=True)
class MoeLayout:
    """A model folder with a MoE card and the recipe as mergekit-moe YAML."""

    target: Target
    arch: str
    experts: Sequence[tuple[str, dict]]
    shared: Sequence[tuple[str, dict]]
    dynamic_shapes: bool = False

    def write_files(self, folder: Path, config: dict) -> None:
        from mergefile.io.hf_folder import write_config

        write_config(config, folder)

    def card_texts(self, plan) -> dict[str, str]:
        params = {p.name: p.value for p in self.target.params if p.filter is None}
        from mergefile.io.header import code_name

        codes = {j.result_dtype for j in plan.jobs}
        dtype = code_name(codes.pop()) if len(codes) == 1 else None
        text = moe_yaml_text(
            plan.donor.label,
            str(_word(params.get("gate_mode", "hidden"))),
            int(params.get("experts_per_token", 2)),
            self.arch,
            dtype,
            self.experts,
            self.shared,
        )
        names = ", ".join(label for label, _ in self.experts)
        card = "\n".join(
            [
                "---",
                "tags:",
                "- mergebuild",
                "- moe",
                "---",
                f"# {plan.name}",
                "",
                f"A {self.arch} Mixture of Experts assembled by mergebuild from **{plan.donor.label}** (attention,"
                f" norms, embeddings) and the experts {names}.",
                "",
                "## Recipe",
                "",
                "```",
                (self.target.origin or text).strip(),
                "```",
                "",
            ]
        )
        return {"README.md": card, MOE_CONFIG: text}


def _word(v: Any) -> Any:
    return getattr(v, "name", v)
