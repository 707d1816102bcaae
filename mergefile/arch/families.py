"""Architecture families as data: ``families.json`` holds one declarative entry per family.

Knowing a family lets a merge tell pre-layer from post-layer tensors exactly (GPT-2's ``wpe`` is
an input-side tensor, ``embed_out`` an output head), find the layer-count key, rewrite per-layer
config arrays on slicing, and treat a missing ``lm_head`` as tied to the input embedding. An
architecture that is not listed falls back to inference from tensor names (``generic.py``).

Adding a family is one entry in ``families.json`` (and a fixture line in
``tests/arch/conftest.py``). Multi-module architectures (vision-language models, encoder-decoders)
are entries of ``_modular``: a module is a tensor-name prefix plus a family (``_parts`` holds the
families that only exist as a module, e.g. a CLIP vision tower).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

__all__ = [
    "Family",
    "Modular",
    "ModuleSpec",
    "arch_id",
    "families",
    "family_for",
    "known_architectures",
    "modular_families",
    "modular_for",
]


@dataclass(frozen=True)
class Family:
    """One architecture family.

    Attributes:
        name: the entry's key, e.g. ``"llama"``.
        model_types: ``config.json`` ``model_type`` values it covers (matched first).
        architectures: ``config.json`` ``architectures[0]`` class names it covers.
        layers: prefix of per-layer tensors, before ``.N.`` (e.g. ``model.layers``); None for a
            module without a layer stack (a vision-language projector).
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
    layers: str | None
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
def _layer_regex(prefix: str | None) -> re.Pattern[str]:
    if prefix is None:
        return re.compile(r"(?!)")  # no layer stack: matches nothing
    return re.compile(rf"^(?P<pre>{re.escape(prefix)})\.(?P<idx>\d+)\.(?P<rest>.+)$")


@cache
def _layer_patterns(names: tuple[str, ...]) -> re.Pattern[str]:
    alts = [re.escape(n.rstrip("?")).replace(r"\*", r"\d+") for n in names]
    return re.compile("^(?:" + "|".join(alts) + ")$")


_TUPLE_FIELDS = (
    "model_types",
    "architectures",
    "embeddings",
    "pre",
    "layer",
    "post",
    "heads",
    "per_layer_arrays",
    "layer_index_lists",
)


def _entry(name: str, raw: Mapping, table: Mapping, defaults: Mapping) -> Family:
    data = dict(defaults)
    if "extends" in raw:
        parent = table[raw["extends"]]
        if "extends" in parent:
            raise ValueError(
                f"families.json: '{name}' extends '{raw['extends']}', which extends again (one level only)"
            )
        data.update(parent)
    data.update({k: v for k, v in raw.items() if k != "extends"})
    unknown = set(data) - (set(Family.__dataclass_fields__) - {"name"})
    if unknown:
        raise ValueError(f"families.json: '{name}' has unknown field(s) {sorted(unknown)}")
    for k in _TUPLE_FIELDS:
        data[k] = tuple(data.get(k, ()))
    return Family(name=name, **data)


@cache
def _table() -> dict:
    text = resources.files("mergefile.arch").joinpath("families.json").read_text(encoding="utf-8")
    return json.loads(text)


def _entries(table: Mapping, defaults: Mapping) -> dict[str, Family]:
    return {name: _entry(name, raw, table, defaults) for name, raw in table.items() if not name.startswith("_")}


@cache
def families() -> dict[str, Family]:
    """Every family in ``families.json``, by name (loaded once)."""
    table = _table()
    return _entries(table, table["_defaults"])


@cache
def parts() -> dict[str, Family]:
    """Families that exist only as a module of a multi-module architecture (``_parts``)."""
    table = _table()
    return _entries(table["_parts"], table["_defaults"])


@dataclass(frozen=True)
class ModuleSpec:
    """One module of a multi-module architecture.

    Attributes:
        name: the module's name in recipes (``text_decoder``, ``vision_tower``).
        prefix: tensor-name prefix it owns, stripped before ``family`` applies ("" = every
            tensor no other module owns).
        config: sub-config key (``text_config``) whose ``model_type`` picks the family and under
            which the family's config keys live; None = the top-level config.
        family: the family after the prefix when the sub-config names no known one; None = the
            layout is inferred from tensor names.
    """

    name: str
    prefix: str
    config: str | None
    family: Family | None


@dataclass(frozen=True)
class Modular:
    """A multi-module architecture (mergekit ``kind: modular``)."""

    name: str
    model_types: tuple[str, ...]
    architectures: tuple[str, ...]
    modules: tuple[ModuleSpec, ...]
    vocab_size_key: str
    tagalong_files: tuple[str, ...]  # small files copied from the config donor (processor configs)

    @property
    def module_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modules)


_SPEC_FIELDS = ("prefix", "config", "family")


def _module(arch: str, name: str, raw: Mapping, defaults: Mapping) -> ModuleSpec:
    fields = {k: v for k, v in raw.items() if k not in _SPEC_FIELDS}
    family = None
    table = _table()["_parts"]
    if fields:  # a family of its own: the named one (if any) with these fields replaced
        spec = dict(fields, extends=raw["family"]) if raw.get("family") else fields
        family = _entry(f"{arch}.{name}", spec, table, defaults)
    elif raw.get("family"):
        if raw["family"] not in table:
            raise ValueError(f"families.json: module '{arch}.{name}' names unknown part family '{raw['family']}'")
        family = parts()[raw["family"]]
    return ModuleSpec(name, raw.get("prefix", ""), raw.get("config"), family)


@cache
def modular_families() -> dict[str, Modular]:
    """Every multi-module architecture in ``families.json`` (``_modular``), by name."""
    table = _table()
    out = {}
    for name, raw in table["_modular"].items():
        if name.startswith("_"):
            continue
        modules = tuple(_module(name, m, spec, table["_defaults"]) for m, spec in raw["modules"].items())
        out[name] = Modular(
            name,
            tuple(raw.get("model_types", ())),
            tuple(raw.get("architectures", ())),
            modules,
            raw.get("vocab_size_key", "vocab_size"),
            tuple(raw.get("tagalong_files", ())),
        )
    return out


def known_architectures() -> list[str]:
    """Every architecture class named in ``families.json`` (single- and multi-module)."""
    names = {a for f in families().values() for a in f.architectures}
    names |= {a for m in modular_families().values() for a in m.architectures}
    return sorted(names)


def modular_for(config: Mapping, arch: str | None = None) -> Modular | None:
    """The multi-module architecture of a config (``arch``: an override_architecture class)."""
    if arch is not None:
        return next((m for m in modular_families().values() if arch in m.architectures), None)
    return _match(config, modular_families().values())


def _match(config: Mapping, entries) -> Any:
    """By ``model_type`` first, else by ``architectures[0]``."""
    entries = list(entries)
    model_type = config.get("model_type")
    for e in entries:
        if model_type in e.model_types:
            return e
    archs = config.get("architectures") or []
    if archs:
        for e in entries:
            if archs[0] in e.architectures:
                return e
    return None


def family_for(config: Mapping, arch: str | None = None) -> Family | None:
    """The family of a ``config.json``: by ``model_type``, else by ``architectures[0]``.

    ``arch`` (a model's ``override_architecture``) decides alone: the class named wins over the
    config's ``model_type``, as in mergekit.
    """
    if arch is not None:
        return next((f for f in families().values() if arch in f.architectures), None)
    return _match(config, families().values())


def part_for(config: Mapping) -> Family | None:
    """The family of a module's sub-config (``vision_config``): a full family, else a part."""
    return _match(config, families().values()) or _match(config, parts().values())


def arch_id(config: Mapping) -> str:
    """What must match between merged models: the architecture class, else the model type."""
    archs = config.get("architectures") or []
    if archs:
        return str(archs[0])
    return str(config.get("model_type") or "unknown")
