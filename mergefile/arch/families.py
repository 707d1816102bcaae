"""Architecture families as data: ``families.json`` holds one declarative entry per family.

Knowing a family lets a merge tell pre-layer from post-layer tensors exactly (GPT-2's ``wpe`` is
an input-side tensor, ``embed_out`` an output head), find the layer-count key, rewrite per-layer
config arrays on slicing, and treat a missing ``lm_head`` as tied to the input embedding. An
architecture that is not listed falls back to inference from tensor names (``generic.py``).

Adding a family is one entry in ``families.json`` (and a fixture line in
``tests/arch/conftest.py``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources

__all__ = ["Family", "arch_id", "families", "family_for"]


@dataclass(frozen=True)
class Family:
    """One architecture family.

    Attributes:
        name: the entry's key, e.g. ``"llama"``.
        model_types: ``config.json`` ``model_type`` values it covers (matched first).
        architectures: ``config.json`` ``architectures[0]`` class names it covers.
        layers: prefix of per-layer tensors, before ``.N.`` (e.g. ``model.layers``).
        embeddings: input embeddings indexed by token id (first = the one heads tie to).
        pre: other tensors before the layers (e.g. position embeddings).
        layer: per-layer names after ``<layers>.N.``; ``?`` = optional, ``*`` = a number.
        post: tensors after the layers (final norm).
        heads: output heads indexed by token id; absent in a checkpoint = tied to embeddings[0].
        tie_default: ``tie_word_embeddings`` when the config does not say.
        layer_count_key: dotted config key of the layer count.
        vocab_size_key: dotted config key of the vocabulary size.
        per_layer_arrays: config lists with one entry per layer (rewritten on slicing).
        layer_index_lists: config lists of layer indices (remapped on slicing).
    """

    name: str
    model_types: tuple[str, ...]
    architectures: tuple[str, ...]
    layers: str
    embeddings: tuple[str, ...]
    pre: tuple[str, ...]
    layer: tuple[str, ...]
    post: tuple[str, ...]
    heads: tuple[str, ...]
    tie_default: bool
    layer_count_key: str
    vocab_size_key: str
    per_layer_arrays: tuple[str, ...]
    layer_index_lists: tuple[str, ...]

    @property
    def layer_regex(self) -> re.Pattern[str]:
        return _layer_regex(self.layers)

    def known_layer_name(self, rest: str) -> bool:
        """Whether ``rest`` (the part after ``<layers>.N.``) is a per-layer name of this family."""
        return _layer_patterns(self.layer).match(rest) is not None

    def required_layer_names(self) -> tuple[str, ...]:
        return tuple(n for n in self.layer if not n.endswith("?") and "*" not in n)


@cache
def _layer_regex(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"^(?P<pre>{re.escape(prefix)})\.(?P<idx>\d+)\.(?P<rest>.+)$")


@cache
def _layer_patterns(names: tuple[str, ...]) -> re.Pattern[str]:
    alts = [re.escape(n.rstrip("?")).replace(r"\*", r"\d+") for n in names]
    return re.compile("^(?:" + "|".join(alts) + ")$")


_TUPLE_FIELDS = ("model_types", "architectures", "embeddings", "pre", "layer", "post", "heads",
                 "per_layer_arrays", "layer_index_lists")


def _entry(name: str, raw: Mapping, table: Mapping, defaults: Mapping) -> Family:
    data = dict(defaults)
    if "extends" in raw:
        parent = table[raw["extends"]]
        if "extends" in parent:
            raise ValueError(f"families.json: '{name}' extends '{raw['extends']}', which extends again (one level only)")
        data.update(parent)
    data.update({k: v for k, v in raw.items() if k != "extends"})
    unknown = set(data) - (set(Family.__dataclass_fields__) - {"name"})
    if unknown:
        raise ValueError(f"families.json: '{name}' has unknown field(s) {sorted(unknown)}")
    for k in _TUPLE_FIELDS:
        data[k] = tuple(data.get(k, ()))
    return Family(name=name, **data)


@cache
def families() -> dict[str, Family]:
    """Every family in ``families.json``, by name (loaded once)."""
    text = resources.files("mergefile.arch").joinpath("families.json").read_text(encoding="utf-8")
    table = json.loads(text)
    defaults = table.pop("_defaults")
    table.pop("_comment", None)
    return {name: _entry(name, raw, table, defaults) for name, raw in table.items()}


def family_for(config: Mapping) -> Family | None:
    """The family of a ``config.json``: by ``model_type``, else by ``architectures[0]``."""
    model_type = config.get("model_type")
    archs = config.get("architectures") or []
    for fam in families().values():
        if model_type in fam.model_types:
            return fam
    if archs:
        for fam in families().values():
            if archs[0] in fam.architectures:
                return fam
    return None


def arch_id(config: Mapping) -> str:
    """What must match between merged models: the architecture class, else the model type."""
    archs = config.get("architectures") or []
    if archs:
        return str(archs[0])
    return str(config.get("model_type") or "unknown")
