"""Which cache keys the current recipe uses, and what each one is.

``cache gc`` keeps exactly these and ``cache ls`` labels entries with them. Two kinds of
blobs exist: final tensors (``keys`` of a keyed plan; a downstream target reads an upstream
target's tensors under the same keys) and per-model stage outputs (a sparsified task vector),
keyed by :func:`mergefile.run.plan_keys.stage_key` with the parameters ``compute.py`` passes it.
Computing them reads no tensor data: keys come from headers and the stat-cache.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mergefile.methods.registry import get_method
from mergefile.run.plan_keys import KeyedPlan, stage_inputs, stage_plan


@dataclass(frozen=True)
class KeyUse:
    """One use of a key: the target and output tensor it serves, and what kind of blob it is."""

    target: str
    tensor: str
    kind: str  # "tensor" | "stage:<model label>"


def stage_keys(kp: KeyedPlan) -> dict[str, KeyUse]:
    """Keys of every per-model stage output the plan's jobs compute (the build's own stage_plan)."""
    out: dict[str, KeyUse] = {}
    plan = kp.plan
    for job in plan.jobs:
        method = get_method(job.method)
        for i, _, key in stage_plan(method, job, stage_inputs(job, kp)):
            label = plan.inputs[job.inputs[i].model].label
            out.setdefault(key, KeyUse(plan.name, job.name, f"stage:{label}"))
    return out


def used_keys(keyed: Iterable[KeyedPlan]) -> dict[str, KeyUse]:
    """Every key the given keyed plans use, final tensors first (a key used twice keeps its first use)."""
    out: dict[str, KeyUse] = {}
    keyed = list(keyed)
    for kp in keyed:
        for name, key in kp.keys.items():
            out.setdefault(key, KeyUse(kp.plan.name, name, "tensor"))
    for kp in keyed:
        for key, use in stage_keys(kp).items():
            out.setdefault(key, use)
    return out


def manifest_keys(out_dirs: Iterable[tuple[str, str]]) -> dict[str, KeyUse]:
    """Keys recorded in the manifests of existing output folders ((target, folder) pairs).

    These are what the folders on disk were built from, current or not; ``cache ls`` uses
    them to name entries of an older version of a recipe.
    """
    from mergefile.store.manifest import read_manifest

    out: dict[str, KeyUse] = {}
    for target, folder in out_dirs:
        man = read_manifest(folder)
        if man is None:
            continue
        for name, rec in man.tensors.items():
            key = rec.get("key")
            if key:
                out.setdefault(key, KeyUse(target, name, "tensor (on disk)"))
    return out


def all_targets(mf) -> list[str]:
    """Every merge target of a recipe (groups add nothing: their members are listed)."""
    from mergefile.syntax.ast import Target

    return [name for name, rule in mf.targets().items() if isinstance(rule, Target)]


def current_usage(mf, store, allow_pickle: bool = False) -> tuple[dict[str, KeyUse], list]:
    """Keys every target of ``mf`` uses now, plus the plan_build rows (for output folders).

    Raises:
        UserError: the recipe does not plan (then nobody can say what is in use).
    """
    from mergefile.run.build import BuildOptions, plan_build

    planned = plan_build(mf, all_targets(mf), store, BuildOptions(dry_run=True, allow_pickle=allow_pickle))
    return used_keys(kp for _, kp, _, _ in planned), planned
