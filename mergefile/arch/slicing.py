"""Frankenmerge rules that depend on the architecture: tied heads, config rewriting, crimes.

Kept apart from the planner so the rules read as a list: pre-layer tensors come from the first
slice and post-layer tensors from the last; an output head exists when any source of the last
slice has one, and a source without one contributes its (tied) input embedding; the output
config gets the new layer count, per-layer arrays and index lists rewritten, and
``tie_word_embeddings`` made true to the output's tensors.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from mergefile.arch.families import arch_id
from mergefile.arch.generic import LayerLayout
from mergefile.errors import ConfigError, Loc

__all__ = ["check_architectures", "config_get", "config_set", "loose_inputs", "rewrite_config"]

_NOT_PER_LAYER = ("architectures", "bos_token_id", "eos_token_id", "pad_token_id", "token_ids")


def loose_inputs(layouts: Sequence[LayerLayout], template: int, kind: str) -> list[tuple[str, list[str]]]:
    """Output names of the 'pre' or 'post' tensors of a slice and, per source, the tensor to read.

    Args:
        layouts: one per source of the slice, in order.
        template: the source whose names the output takes.
        kind: ``"pre"`` or ``"post"``.

    Returns:
        ``(output name, [input tensor name per source])``; a source lacking an output head reads
        its input embedding instead (tied weights, mergekit PR #464).
    """
    t = layouts[template]
    names = list(t.pre if kind == "pre" else t.post)
    if kind == "post":
        for lay in layouts:
            names += [h for h in lay.post if lay.is_head(h) and h not in names]
    out = []
    for name in sorted(names):
        out.append((name, [lay.tied_source(name) or name for lay in layouts]))
    return out


def check_architectures(models: Sequence[tuple[str, Mapping]], allow: bool, target: str, loc: Loc | None) -> list[str]:
    """Refuse (or, with ``--allow-crimes``, warn about) merging different architectures.

    Returns:
        Warnings for the plan (empty when all inputs share one architecture).

    Raises:
        ConfigError: architectures differ and ``allow`` is false.
    """
    by_arch: dict[str, list[str]] = {}
    for label, config in models:
        labels = by_arch.setdefault(arch_id(config), [])
        if label not in labels:
            labels.append(label)
    if len(by_arch) <= 1:
        return []
    detail = "; ".join(f"{', '.join(labels)}: {arch}" for arch, labels in by_arch.items())
    msg = f"target '{target}' mixes architectures ({detail})"
    if not allow:
        raise ConfigError(msg, loc, "pass --allow-crimes to merge them anyway")
    return [f"{msg}; merging anyway (--allow-crimes)"]


def config_get(config: Mapping, key: str) -> Any:
    """``config["a"]["b"]`` for ``"a.b"``; None when any part is missing."""
    node: Any = config
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def config_set(config: dict, key: str, value: Any) -> None:
    """Set a dotted key, creating sub-configs as needed."""
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _array_keys(config: Mapping, layout: LayerLayout, old_layers: int) -> list[str]:
    """Per-layer arrays: the family's list, or (unknown family) any list one entry per layer."""
    if layout.family is not None:
        return [k for k in layout.per_layer_arrays if isinstance(config_get(config, k), list)]
    return [
        k
        for k, v in config.items()
        if isinstance(v, list) and len(v) == old_layers and old_layers > 1 and not any(x in k for x in _NOT_PER_LAYER)
    ]


def rewrite_config(
    config: Mapping,
    layout: LayerLayout,
    layer_map: Sequence[tuple],
    head_in_output: bool | None,
    original: Mapping | None = None,
) -> tuple[dict, list[str]]:
    """The output ``config.json``: the donor's, fitted to the output's layers and head.

    Args:
        config: the donor's config (or, for the second module of a multi-module model, the
            config the first module's rewrite returned).
        layout: the donor's layout (layer key, per-layer keys, tie default).
        layer_map: per output layer ``(_, source layer, source model)``; models have ``.config``.
        head_in_output: whether the output has an output-head tensor (else it is tied); None
            leaves ``tie_word_embeddings`` alone (a module without a head).
        original: the donor's own config when ``config`` is a rewritten copy of it.

    Returns:
        The new config and warnings.
    """
    out = copy.deepcopy(dict(config))
    warnings: list[str] = []
    n, old = len(layer_map), layout.num_layers
    donor = config if original is None else original
    changed = n != old or any(src != k or model.config is not donor for k, (_, src, model) in enumerate(layer_map))
    if changed and n:
        if layout.layer_key:
            config_set(out, layout.layer_key, n)
        elif n != old:
            warnings.append(
                f"config.json has no layer-count key (tried num_hidden_layers, n_layer, ...): it still says {old} layers, the output has {n}"
            )
        for key in _array_keys(out, layout, old):
            donor = config_get(out, key)
            if len(donor) != old:
                continue
            new = []
            for _, src, model in layer_map:
                arr = config_get(model.config, key)
                new.append(arr[src] if isinstance(arr, list) and src < len(arr) else donor[min(src, len(donor) - 1)])
            config_set(out, key, new)
        for key in layout.layer_index_lists:
            if isinstance(config_get(out, key), list):
                config_set(
                    out,
                    key,
                    [k for k, (_, src, model) in enumerate(layer_map) if src in (config_get(model.config, key) or [])],
                )
    if head_in_output is None:
        return out, warnings
    if layout.family is not None or "tie_word_embeddings" in out:
        want = not head_in_output
        if bool(out.get("tie_word_embeddings", layout.tie_default)) != want:
            out["tie_word_embeddings"] = want
    return out, warnings
