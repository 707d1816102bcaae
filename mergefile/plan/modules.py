"""Multi-module targets (mergekit ``modules:``): vision-language models, encoder-decoders.

Each module of the architecture (``families.json`` ``_modular``) is planned like a model of its
own: its sources or slices, its layer count and numbering, its pre- and post-layer tensors
(from its first and last slice), its gradient positions and its layer-count config key.
Parameters resolve source > slice > module > target > file > method default (reference §2.5).

Where mergekit differs, on purpose:
* a module the recipe does not name is an error (mergekit writes no tensor for it, so the
  output silently lacks e.g. the projector);
* a module's post-layer tensors come from the models of its *last* slice (mergekit pairs the
  first slice's tensor list with the last slice's models, which breaks when they differ);
* tensors under no module's prefix are an error (mergekit drops them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mergefile.arch.families import Modular, arch_id, modular_families
from mergefile.arch.generic import LayerLayout
from mergefile.arch.slicing import check_architectures, config_get, config_set, rewrite_config
from mergefile.errors import ConfigError, Loc, did_you_mean
from mergefile.methods.base import BaseRule, Method
from mergefile.plan.card import card_texts
from mergefile.plan.inputs import InputModel
from mergefile.plan.jobs import TargetPlan, TensorJob
from mergefile.plan.pool import Inputs, check_unique
from mergefile.plan.vocab import fit_config, plan_vocab
from mergefile.syntax.ast import Module, Target

if TYPE_CHECKING:
    from mergefile.plan.planner import Holder, LayoutOf, Planner

__all__ = ["ModularFiles", "modular_arch", "plan_modules"]


def _known() -> str:
    return "; ".join(f"{a} ({', '.join(m.module_names)})" for m in modular_families().values() for a in m.architectures)


def _first_model(p: Planner, t: Target, base: InputModel | None) -> InputModel | None:
    """The config donor: the base, else the first model the recipe names."""
    if base is not None:
        return base
    holders: list[Holder] = list(t.modules) or [t]
    for h in holders:
        for s in list(h.sources) + [s for sl in h.slices for s in sl.sources]:
            return p.resolver.resolve(s.ref, s.loc)
    return None


def modular_arch(p: Planner, t: Target, base: InputModel | None) -> Modular | None:
    """The multi-module architecture a target is planned by, or None for a single layer stack.

    ``module`` blocks need one; plain sources on a multi-module model mean every module merges
    those sources (as mergekit does); slices on one are refused (which module would they cut?).
    """
    donor = _first_model(p, t, base)
    mm = donor.get_modules() if donor is not None else None
    if t.modules and mm is None:
        what = f"model '{donor.label}' ({arch_id(donor.config)})" if donor is not None else "it"
        raise ConfigError(
            f"target '{t.name}' has 'module' blocks, but {what} is not a known multi-module architecture",
            t.modules[0].loc or t.loc,
            f"known: {_known()}; override_architecture names the class a model is read as",
        )
    if mm is not None and t.slices:
        raise ConfigError(
            f"{arch_id(donor.config)} has several layer stacks ({', '.join(mm.arch.module_names)}): slices go inside"
            " 'module' blocks (mergekit 'modules:')",
            t.slices[0].loc or t.loc,
        )
    return mm.arch if mm is not None else None


def _holders(t: Target, arch: Modular, label: str) -> dict[str, Holder]:
    """Module name -> what holds its sources: its block, or the target for every module."""
    if not t.modules:
        return {name: t for name in arch.module_names}
    names = arch.module_names
    out: dict[str, Holder] = {}
    for m in t.modules:
        if m.name not in names:
            close = did_you_mean(m.name, names)
            hint = (close + " " if close else "") + "modules: " + ", ".join(names)
            raise ConfigError(f"unknown module '{m.name}' for {label}", m.loc, hint)
        out[m.name] = m
    missing = [n for n in names if n not in out]
    if missing:
        raise ConfigError(
            f"target '{t.name}' has no block for module(s) {', '.join(missing)} of {label}: every module's tensors"
            " must come from somewhere",
            t.modules[0].loc or t.loc,
            "add e.g. 'module " + missing[0] + " { base }' (mergekit would silently leave them out)",
        )
    return {n: out[n] for n in names}


def _layout_of(name: str, arch: Modular, loc: Loc | None) -> LayoutOf:
    """A model's layout of module ``name``; a clear error for a model without that module."""

    def get(m: InputModel) -> LayerLayout:
        mm = m.get_modules()
        if mm is None or name not in mm.layouts:
            raise ConfigError(f"model '{m.label}' ({arch_id(m.config)}) has no module '{name}' of {arch.name}", loc)
        if mm.unowned:
            shown = ", ".join(mm.unowned[:4]) + (" ..." if len(mm.unowned) > 4 else "")
            raise ConfigError(
                f"model '{m.label}' has tensors outside every module of {arch.name}: {shown}",
                loc,
                "add their prefix to a module in mergefile/arch/families.json",
            )
        return mm.layouts[name]

    return get


def _set_tie(config: dict, lay: LayerLayout, head_in_output: bool) -> None:
    """``tie_word_embeddings`` (top level and the module's sub-config) true to the output's head."""
    want = not head_in_output
    for key in dict.fromkeys((lay.tie_key, "tie_word_embeddings")):
        value = config_get(config, key)
        if value is None and key != lay.tie_key:
            continue
        if bool(lay.tie_default if value is None else value) != want:
            config_set(config, key, want)


def plan_modules(p: Planner, t: Target, method: Method, base: InputModel | None, arch: Modular) -> TargetPlan:
    """Plan a target of a multi-module architecture, module by module (see the module docstring)."""
    label = arch.architectures[0] if arch.architectures else arch.name
    holders = _holders(t, arch, label)
    if method.base is BaseRule.REQUIRED and base is None and any(not h.slices for h in holders.values()):
        raise ConfigError(f"{method.name} needs a base model: add base=MODEL", t.method_loc or t.loc)
    pool = Inputs()
    planned = {}  # module -> (its slices, its layout getter)
    for h in holders.values():
        refs = list(h.sources) + [s for sl in h.slices for s in sl.sources]
        for s in refs:
            pool.index_of(p.resolver.resolve(s.ref, s.loc))
    if base is not None and method.base is not BaseRule.IGNORED:
        pool.index_of(base)
    models = pool.models  # grows no further: every module's sources are in it
    warnings = check_architectures(
        [(m.label, m.config) for m in models], p.resolver.options.allow_crimes, t.name, t.loc
    )
    for name, h in holders.items():
        layout_of = _layout_of(name, arch, h.loc or t.loc)
        slices = p.sources(h, method, base, f"module '{name}' of target '{t.name}'", layout_of)
        for sl in slices:
            sl.outer = h.params if isinstance(h, Module) else ()
            for s in sl.sources:
                pool.index_of(s.model)
        planned[name] = (slices, layout_of)
    warnings += list(dict.fromkeys(f"{m.label}: {n}" for m in models for n in m.get_layout().notes))
    ctx = p.job_factory(t, method, warnings, pool)
    jobs: list[TensorJob] = []
    stacks: dict[str, tuple[list[TensorJob], list[tuple]]] = {}
    for name, (slices, layout_of) in planned.items():
        js, layer_map = p.stack_jobs(ctx, slices, layout_of, name)
        stacks[name] = (js, layer_map)
        jobs += js
    check_unique(jobs, t)
    first = planned[next(iter(holders))][0][0]
    donor = base if base is not None and any(m is base for m in models) else first.sources[first.template].model
    config: dict = dict(donor.config)
    for name, (js, layer_map) in stacks.items():
        lay = donor.get_modules().layouts[name]
        config, notes = rewrite_config(config, lay, layer_map, None, original=donor.config)
        warnings += notes
        if lay.head_names:
            _set_tie(config, lay, any(j.name in lay.head_names for j in js))
    vocab = plan_vocab(p, t, base, donor, models, jobs, warnings)
    if vocab is not None and vocab.size is not None:
        jobs = vocab.apply(jobs, models)
        fit_config(config, donor.get_layout(), vocab.size)
    plan = TargetPlan(
        name=t.name,
        out_dir=p.base_dir / t.name,
        target=t,
        method=method,
        inputs=models,
        jobs=jobs,
        config=config,
        donor=vocab.donor if vocab is not None else donor,
        num_layers=sum(len(s[1]) for s in stacks.values()),
        layer_key=None,
        warnings=warnings,
        vocab=vocab,
        layout=ModularFiles(donor.path, arch.tagalong_files),
    )
    plan.assign_shards()
    return plan


@dataclass(frozen=True)
class ModularFiles:
    """A model folder whose config donor's processor files (mergekit's ``tagalong_files``, e.g.
    ``preprocessor_config.json``) come along. Their text is part of the output's aux key, so an
    edit of the donor's file rewrites the output's copy."""

    folder: str
    files: tuple[str, ...]

    def write_files(self, folder: Path, config: dict) -> None:
        from mergefile.io.hf_folder import write_config

        write_config(config, folder)

    def card_texts(self, plan: TargetPlan) -> Mapping[str, str]:
        texts = dict(card_texts(plan))
        for name in self.files:
            f = Path(self.folder) / name
            if f.is_file():
                texts[name] = f.read_text(encoding="utf-8")
        return texts
