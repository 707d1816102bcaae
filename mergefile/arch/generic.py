"""How one checkpoint's tensors split into pre-layer, per-layer and post-layer groups.

A known family (``families.json``) says it exactly. For anything else the layout is inferred:
decoder checkpoints name per-layer tensors ``<prefix>.<N>.<rest>`` under a container such as
``layers``, ``h``, ``blocks`` or ``layer``, which is all a merge needs to renumber layers; loose
tensors that look like input embeddings are 'pre', the rest 'post'.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from mergefile.arch.families import Family

_LAYER = re.compile(r"^(?P<pre>(?:.*\.)?(?:layers|h|blocks|layer|decoder\.layers|block))\.(?P<idx>\d+)\.(?P<rest>.+)$")
_EMBED_HINTS = ("embed", "wte", "wpe", "tok_embeddings", "word_embeddings", "embeddings")
_HEAD_HINTS = ("lm_head", "embed_out", "output.weight")
_POSITION_HINTS = ("wpe", "position", "pos_emb", "embed_positions")
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


@dataclass(frozen=True)
class LayerName:
    """A per-layer tensor name split into a template and its layer index."""

    template: str  # e.g. "model.layers.{}.mlp.up_proj.weight"
    index: int

    def at(self, index: int) -> str:
        return self.template.format(index)


def _layer_name(pre: str, idx: str, rest: str) -> LayerName:
    esc = lambda s: s.replace("{", "{{").replace("}", "}}")  # noqa: E731
    return LayerName(f"{esc(pre)}.{{}}.{esc(rest)}", int(idx))


def split_layer_name(name: str) -> LayerName | None:
    """``model.layers.3.mlp.up_proj.weight`` -> (``model.layers.{}.mlp.up_proj.weight``, 3)."""
    m = _LAYER.match(name)
    return _layer_name(m.group("pre"), m.group("idx"), m.group("rest")) if m else None


def is_embedding(name: str) -> bool:
    """Vocabulary-indexed matrices (embeddings and output heads): sizes may differ by vocab."""
    return any(h in name for h in _EMBED_HINTS) or any(h in name for h in _HEAD_HINTS)


def _is_head(name: str) -> bool:
    return any(h in name for h in _HEAD_HINTS)


def _is_word_embedding(name: str) -> bool:
    return any(h in name for h in _EMBED_HINTS) and not _is_head(name) and not any(p in name for p in _POSITION_HINTS)


@dataclass(frozen=True)
class LayerLayout:
    """How one checkpoint's tensors split into pre-layer, per-layer and post-layer groups."""

    num_layers: int
    layer_key: str | None  # config key holding the layer count, if found
    pre: tuple[str, ...]
    post: tuple[str, ...]
    layers: Mapping[int, tuple[LayerName, ...]]  # layer index -> its tensors
    family: str | None = None  # known family name, None when inferred
    embedding: str | None = None  # the input embedding that a missing head is tied to
    head_names: tuple[str, ...] = ()  # output-head names of this architecture (present or not)
    vocab: tuple[str, ...] = ()  # tensors present whose rows are token ids
    notes: tuple[str, ...] = ()  # what the family table did not describe (warnings)
    per_layer_arrays: tuple[str, ...] = ("layer_types",)
    layer_index_lists: tuple[str, ...] = ()
    vocab_key: str = "vocab_size"
    tie_default: bool = False
    tie_key: str = "tie_word_embeddings"  # where the config says whether the head is tied
    names: frozenset[str] = field(default=frozenset(), repr=False)

    def templates(self, index: int) -> tuple[LayerName, ...]:
        return self.layers.get(index, ())

    def is_head(self, name: str) -> bool:
        return name in self.head_names if self.family else _is_head(name)

    def tied_source(self, name: str) -> str | None:
        """The tensor to read for output head ``name`` when this model has none: its embedding."""
        if name in self.names or not self.is_head(name):
            return None
        return self.embedding


def _config_layers(config: Mapping, keys: Iterable[str] = LAYER_COUNT_KEYS) -> tuple[str | None, int | None]:
    for key in keys:
        node: object = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if isinstance(node, int) and not isinstance(node, bool):
            return key, node
    text = config.get("text_config")
    if isinstance(text, Mapping):
        key, n = _config_layers(text, keys)
        if key:
            return f"text_config.{key}", n
    return None, None


def generic_layout(names: list[str], config: Mapping) -> LayerLayout:
    """Unknown architecture: layers from ``…layers.N…`` names, loose embeddings 'pre', the rest 'post'."""
    layers: dict[int, list[LayerName]] = {}
    pre: list[str] = []
    post: list[str] = []
    for name in names:
        ln = split_layer_name(name)
        if ln is not None:
            layers.setdefault(ln.index, []).append(ln)
        elif any(h in name for h in _EMBED_HINTS) and not _is_head(name):
            pre.append(name)
        else:
            post.append(name)
    key, n = _config_layers(config)
    inferred = (max(layers) + 1) if layers else 0
    words = [p for p in pre if _is_word_embedding(p)]
    return LayerLayout(
        num_layers=n if n is not None else inferred,
        layer_key=key,
        pre=tuple(pre),
        post=tuple(post),
        layers={i: tuple(v) for i, v in layers.items()},
        embedding=words[0] if words else None,
        head_names=tuple(p for p in post if _is_head(p)),
        vocab=tuple(words + [p for p in post if _is_head(p)]),
        names=frozenset(names),
    )


def family_layout(fam: Family, names: list[str], config: Mapping) -> LayerLayout:
    """Known family: the table decides pre/post and per-layer names; unknown names are inferred."""
    layers: dict[int, list[LayerName]] = {}
    pre: list[str] = []
    post: list[str] = []
    odd: list[str] = []
    pre_names, post_names = set(fam.embeddings) | set(fam.pre), set(fam.post) | set(fam.heads)
    for name in names:
        m = fam.layer_regex.match(name)
        if m is not None:
            layers.setdefault(int(m.group("idx")), []).append(
                _layer_name(m.group("pre"), m.group("idx"), m.group("rest"))
            )
            if not fam.known_layer_name(m.group("rest")):
                odd.append(f"{m.group('pre')}.N.{m.group('rest')}")
        elif name in pre_names:
            pre.append(name)
        elif name in post_names:
            post.append(name)
        else:
            odd.append(name)
            ln = split_layer_name(name) if fam.layers is not None else None
            if ln is not None:
                layers.setdefault(ln.index, []).append(ln)
            elif _is_word_embedding(name):
                pre.append(name)
            else:
                post.append(name)
    key, n = _config_layers(config, (fam.layer_count_key,))
    if key is None and fam.layers is not None:
        key, n = _config_layers(config)
    if fam.layers is None:  # a module without a layer stack (a projector)
        key, n = None, 0
    notes = ()
    if odd:
        shown = ", ".join(sorted(set(odd))[:5]) + (" ..." if len(set(odd)) > 5 else "")
        notes = (f"tensors not in the '{fam.name}' family table, placed by name: {shown}",)
    present = set(names)
    embedding = next((e for e in fam.embeddings if e in present), None)
    return LayerLayout(
        num_layers=n if n is not None else ((max(layers) + 1) if layers else 0),
        layer_key=key,
        pre=tuple(pre),
        post=tuple(post),
        layers={i: tuple(v) for i, v in layers.items()},
        family=fam.name,
        embedding=embedding,
        head_names=fam.heads,
        vocab=tuple(x for x in (*fam.embeddings, *fam.heads) if x in present),
        notes=notes,
        per_layer_arrays=fam.per_layer_arrays,
        layer_index_lists=fam.layer_index_lists,
        vocab_key=fam.vocab_size_key,
        tie_default=fam.tie_default,
        names=frozenset(names),
    )
