"""mergekit-moe configs -> a ``moe`` target, so ``mergebuild --config moe.yml OUT`` builds them.

A config is a MoE config when it has ``experts:`` (merge configs never do). Keys, as mergekit's
``MoEMergeConfig``: ``base_model``, ``experts`` and ``shared_experts`` (each ``source_model``,
``positive_prompts``, ``negative_prompts``, ``noise_scale``, ``residual_scale``), ``gate_mode``,
``dtype``, ``experts_per_token``, ``architecture``; model strings take ``path[@rev][+lora]``.
Unknown keys are ignored, as mergekit ignores them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from mergefile.errors import ConfigError, Loc
from mergefile.syntax.ast import AutoRef, Param, Source, Sym, Target

__all__ = ["is_moe_config", "moe_yaml_to_target"]

EXPERT_KEYS = {
    "positive_prompts": "prompts",
    "negative_prompts": "negative",
    "noise_scale": "noise_scale",
    "residual_scale": "residual_scale",
}


def is_moe_config(data: Any) -> bool:
    return isinstance(data, dict) and "experts" in data


def moe_yaml_to_target(path: str | os.PathLike[str], target_name: str) -> Target | None:
    """The ``moe`` target of a mergekit-moe config file, or None when it is not one.

    Raises:
        ConfigError: it is a MoE config but a required key is missing or malformed.
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None  # the merge-config importer reports YAML errors with their location
    if not is_moe_config(data):
        return None
    loc = Loc(str(path), 1, 1)
    base_dir = os.getcwd()  # mergekit-moe reads model paths from the working directory (syntax/model_paths.py)
    if "base_model" not in data:
        raise ConfigError("mergekit-moe config needs base_model", loc)
    params = [Param("base", _ref(data["base_model"], base_dir, loc), None, loc)]
    for key, name in (
        ("gate_mode", "gate_mode"),
        ("experts_per_token", "experts_per_token"),
        ("architecture", "architecture"),
        ("dtype", "dtype"),
        ("out_dtype", "out_dtype"),
    ):
        if data.get(key) is not None:
            value = data[key]
            params.append(Param(name, Sym(value, loc) if key in ("dtype", "out_dtype") else value, None, loc))
    sources = [_expert(e, base_dir, loc, False) for e in _list(data, "experts", loc)]
    sources += [_expert(e, base_dir, loc, True) for e in _list(data, "shared_experts", loc)]
    return Target(target_name, "moe", tuple(params), tuple(sources), (), (), loc, loc, text)


def _list(data: dict, key: str, loc: Loc) -> list:
    value = data.get(key) or []
    if not isinstance(value, list):
        raise ConfigError(f"'{key}' must be a list of experts", loc)
    return value


def _ref(text: Any, base_dir: str, loc: Loc) -> AutoRef:
    from mergefile.syntax.yaml_reader import split_model_string

    if isinstance(text, dict):  # {model: ..., lora: ...}
        model, lora = text.get("model"), text.get("lora")
        text = f"{model}+{lora}" if lora else model
    if not isinstance(text, str):
        raise ConfigError(f"a model reference must be a string, got {text!r}", loc)
    try:
        p, rev, lora, lora_rev = split_model_string(text)
    except ValueError as e:
        raise ConfigError(f"bad model reference '{text}': {e}", loc) from None
    join = lambda a, r: a + (f"@{r}" if r else "")  # noqa: E731
    lora_ref = AutoRef(join(lora, lora_rev), base_dir, loc) if lora else None
    return AutoRef(join(p, rev), base_dir, loc, lora_ref)


def _expert(entry: Any, base_dir: str, loc: Loc, shared: bool) -> Source:
    if not isinstance(entry, dict) or "source_model" not in entry:
        raise ConfigError("each expert needs source_model", loc)
    params = []
    for key, name in EXPERT_KEYS.items():
        value = entry.get(key)
        if value is None:
            continue
        if key.endswith("prompts"):
            if isinstance(value, str):
                value = [value]
            value = tuple(str(v) for v in value)
        params.append(Param(name, value, None, loc))
    if shared:
        params.append(Param("shared", True, None, loc))
    return Source(_ref(entry["source_model"], base_dir, loc), None, tuple(params), loc)
