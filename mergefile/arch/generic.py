"""Architecture inference from tensor names and config.json.

Decoder checkpoints name per-layer tensors ``<prefix>.<N>.<rest>`` under a container such as
``layers``, ``h``, ``blocks`` or ``layer``. That is all a merge needs to renumber layers, so
this works for any family whose names follow the convention; a later data table can refine it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_LAYER = re.compile(r"^(?P<pre>(?:.*\.)?(?:layers|h|blocks|layer|decoder\.layers|block))\.(?P<idx>\d+)\.(?P<rest>.+)$")
_EMBED_HINTS = ("embed", "wte", "wpe", "tok_embeddings", "word_embeddings", "embeddings")
_HEAD_HINTS = ("lm_head", "embed_out", "output.weight")
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


@dataclass(frozen=True)
class LayerName:
    """A per-layer tensor name split into a template and its layer index."""

    template: str  # e.g. "model.layers.{}.mlp.up_proj.weight"
    index: int

    def at(self, index: int) -> str:
        return self.template.format(index)


def split_layer_name(name: str) -> LayerName | None:
    """``model.layers.3.mlp.up_proj.weight`` -> (``model.layers.{}.mlp.up_proj.weight``, 3)."""
    m = _LAYER.match(name)
    if not m:
        return None
    rest = m.group("rest").replace("{", "{{").replace("}", "}}")
    pre = m.group("pre").replace("{", "{{").replace("}", "}}")
    return LayerName(f"{pre}.{{}}.{rest}", int(m.group("idx")))


def is_embedding(name: str) -> bool:
    """Vocabulary-indexed matrices (embeddings and output heads): sizes may differ by vocab."""
    return any(h in name for h in _EMBED_HINTS) or any(h in name for h in _HEAD_HINTS)


@dataclass(frozen=True)
class LayerLayout:
    """How one checkpoint's tensors split into pre-layer, per-layer and post-layer groups."""

    num_layers: int
    layer_key: str | None  # config key holding the layer count, if found
    pre: tuple[str, ...]
    post: tuple[str, ...]
    layers: Mapping[int, tuple[LayerName, ...]]  # layer index -> its tensors

    def templates(self, index: int) -> tuple[LayerName, ...]:
        return self.layers.get(index, ())


def _config_layers(config: Mapping) -> tuple[str | None, int | None]:
    for key in LAYER_COUNT_KEYS:
        if isinstance(config.get(key), int):
            return key, config[key]
    text = config.get("text_config")
    if isinstance(text, Mapping):
        key, n = _config_layers(text)
        if key:
            return f"text_config.{key}", n
    return None, None


def layer_layout(names: Iterable[str], config: Mapping) -> LayerLayout:
    """Group tensor names by layer; non-layer tensors before the first layer are 'pre'.

    A loose tensor is 'pre' when it looks like an input embedding, else 'post' (final norm,
    lm_head): frankenmerges take pre tensors from the first slice and post from the last.
    """
    layers: dict[int, list[LayerName]] = {}
    pre: list[str] = []
    post: list[str] = []
    for name in sorted(names):
        ln = split_layer_name(name)
        if ln is not None:
            layers.setdefault(ln.index, []).append(ln)
        elif any(h in name for h in _EMBED_HINTS) and not any(h in name for h in _HEAD_HINTS):
            pre.append(name)
        else:
            post.append(name)
    key, n = _config_layers(config)
    inferred = (max(layers) + 1) if layers else 0
    return LayerLayout(
        num_layers=n if n is not None else inferred,
        layer_key=key,
        pre=tuple(pre),
        post=tuple(post),
        layers={i: tuple(v) for i, v in layers.items()},
    )
