"""Layouts of multi-module checkpoints: one :class:`LayerLayout` per module, with full names.

A module of a ``_modular`` entry (``families.json``) owns the tensors under its prefix; its
layout is computed on the names with the prefix stripped and the module's sub-config (so a
Llava text decoder is laid out exactly like a Llama), then every tensor name gets the prefix
back and every config key the sub-config's (``text_config.num_hidden_layers``). The planner
then treats each module as a model of its own: numbered layers, pre- and post-layer tensors,
a layer-count key, per-layer config arrays.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from mergefile.arch.families import Modular, ModuleSpec, family_for, modular_for, part_for
from mergefile.arch.generic import LayerLayout, LayerName, family_layout, generic_layout
from mergefile.arch.slicing import config_get

__all__ = ["ModelModules", "combined_layout", "model_modules"]


@dataclass(frozen=True)
class ModelModules:
    """One checkpoint split by the modules of its architecture."""

    arch: Modular
    layouts: Mapping[str, LayerLayout]  # module name -> its layout (full tensor names)
    unowned: tuple[str, ...]  # tensors under no module's prefix (an error to merge)


def _owner(name: str, specs: tuple[ModuleSpec, ...]) -> ModuleSpec | None:
    """The module with the longest prefix of ``name`` ("" owns the rest)."""
    best = None
    for spec in specs:
        if name.startswith(spec.prefix) and (best is None or len(spec.prefix) > len(best.prefix)):
            best = spec
    return best


def _esc(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _prefixed(lay: LayerLayout, prefix: str, key_prefix: str, module: str) -> LayerLayout:
    """``lay`` (of stripped names) with full tensor names and full dotted config keys."""
    names = lambda xs: tuple(prefix + x for x in xs)  # noqa: E731
    keys = lambda xs: tuple(key_prefix + x for x in xs)  # noqa: E731
    layers = {i: tuple(LayerName(_esc(prefix) + ln.template, ln.index) for ln in v) for i, v in lay.layers.items()}
    return replace(
        lay,
        layer_key=key_prefix + lay.layer_key if lay.layer_key else None,
        pre=names(lay.pre),
        post=names(lay.post),
        layers=layers,
        embedding=prefix + lay.embedding if lay.embedding else None,
        head_names=names(lay.head_names),
        vocab=names(lay.vocab),
        notes=tuple(f"module {module}: {n}" for n in lay.notes),
        per_layer_arrays=keys(lay.per_layer_arrays),
        layer_index_lists=keys(lay.layer_index_lists),
        vocab_key=key_prefix + lay.vocab_key,
        tie_key=key_prefix + lay.tie_key,
        names=frozenset(names(lay.names)),
    )


def _module_layout(spec: ModuleSpec, names: list[str], config: Mapping) -> LayerLayout:
    sub = config_get(config, spec.config) if spec.config else config
    sub = sub if isinstance(sub, Mapping) else {}
    stripped = sorted(n[len(spec.prefix) :] for n in names)
    fam = (part_for(sub) if spec.config else None) or spec.family
    lay = family_layout(fam, stripped, sub) if fam is not None else generic_layout(stripped, sub)
    return _prefixed(lay, spec.prefix, f"{spec.config}." if spec.config else "", spec.name)


def model_modules(names: Iterable[str], config: Mapping, arch: Modular) -> ModelModules:
    """Split a checkpoint's tensor names by ``arch``'s modules and lay each module out."""
    owned: dict[str, list[str]] = {m.name: [] for m in arch.modules}
    unowned = []
    for name in names:
        spec = _owner(name, arch.modules)
        if spec is None:
            unowned.append(name)
        else:
            owned[spec.name].append(name)
    layouts = {m.name: _module_layout(m, owned[m.name], config) for m in arch.modules}
    return ModelModules(arch, layouts, tuple(sorted(unowned)))


def combined_layout(mm: ModelModules, names: Iterable[str]) -> LayerLayout:
    """The whole checkpoint as one layout (no layer stack): what vocabulary planning and LoRA
    extraction ask of a model; merges plan module by module instead."""
    lays = list(mm.layouts.values())
    embedding = next((lay.embedding for lay in lays if lay.embedding and lay.vocab), None)
    notes = [n for lay in lays for n in lay.notes]
    if mm.unowned:
        notes.append(f"tensors outside every module of {mm.arch.name}: " + ", ".join(mm.unowned[:5]))
    return LayerLayout(
        num_layers=0,
        layer_key=None,
        pre=tuple(n for lay in lays for n in lay.pre),
        post=tuple(n for lay in lays for n in lay.post),
        layers={},
        family=mm.arch.name,
        embedding=embedding,
        head_names=tuple(n for lay in lays for n in lay.head_names),
        vocab=tuple(n for lay in lays for n in lay.vocab),
        notes=tuple(notes),
        per_layer_arrays=(),
        vocab_key=mm.arch.vocab_size_key,
        names=frozenset(names),
    )


def layer_layout(names: Iterable[str], config: Mapping, arch: str | None = None) -> LayerLayout:
    """Group tensor names by layer; use the family table when the config names a known family.

    ``arch`` (a model's ``override_architecture``) picks the family by class name. A
    multi-module architecture gets one layout of all its tensors with no layer stack
    (this module lays out each module).
    """
    names = sorted(names)
    mod = modular_for(config, arch)
    if mod is not None:
        return combined_layout(model_modules(names, config, mod), names)
    fam = family_for(config, arch)
    return family_layout(fam, names, config) if fam else generic_layout(names, config)
