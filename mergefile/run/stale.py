"""Why a target or tensor must be rebuilt — as data (an enum of reasons), like ninja -d explain.

Staleness is decided by keys alone; the recorded recipes only explain a difference the keys
already found (parameter old -> new, which input changed, method version).
"""

from __future__ import annotations

import enum
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from mergefile.run.plan_keys import KeyedPlan
from mergefile.store.manifest import Manifest, read_manifest, shard_stat


class Reason(enum.Enum):
    MISSING_OUTPUT = "missing output"
    NEW_TENSOR = "new tensor"
    PARAM_CHANGED = "parameter changed"
    INPUT_CHANGED = "input changed"
    METHOD_CHANGED = "method changed"
    METHOD_VERSION = "method version changed"
    DTYPE_CHANGED = "dtype changed"
    OUTPUT_MODIFIED = "output file changed on disk"
    FORCED = "forced"
    KEY_FORMAT = "key format changed"


@dataclass(frozen=True)
class Stale:
    tensor: str
    reason: Reason
    details: tuple[str, ...] = ()


@dataclass
class TargetStatus:
    """The comparison of a keyed plan with what is on disk."""

    kp: KeyedPlan
    manifest: Manifest | None
    stale: dict[str, Stale] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    reuse_shards: set[str] = field(default_factory=set)
    write_shards: set[str] = field(default_factory=set)
    aux_key: str = ""
    aux_stale: bool = False

    @property
    def up_to_date(self) -> bool:
        return not self.stale and not self.removed and not self.write_shards and not self.aux_stale


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(round(v, 6)) if abs(v - round(v, 6)) < 1e-12 else repr(v)
    return "unset" if v is None else str(v)


def diff_recipe(old: dict[str, Any], new: dict[str, Any]) -> tuple[Reason, tuple[str, ...]]:
    """The first kind of difference between two recorded recipes, and every change in words."""
    out: list[tuple[Reason, str]] = []
    if old.get("method") != new.get("method"):
        out.append((Reason.METHOD_CHANGED, f"method {old.get('method')} -> {new.get('method')}"))
    elif old.get("version") != new.get("version"):
        out.append((Reason.METHOD_VERSION, f"{new['method']} version {old.get('version')} -> {new.get('version')}"))
    for k in ("dtype", "out_dtype"):
        if old.get(k) != new.get(k):
            out.append((Reason.DTYPE_CHANGED, f"{k} {_fmt(old.get(k))} -> {_fmt(new.get(k))}"))
    op, np_ = old.get("params", {}), new.get("params", {})
    for k in sorted(set(op) | set(np_)):
        if op.get(k) != np_.get(k):
            out.append((Reason.PARAM_CHANGED, f"{k} {_fmt(op.get(k))} -> {_fmt(np_.get(k))}"))
    if old.get("vocab") != new.get("vocab"):
        out.append((Reason.PARAM_CHANGED, "tokenizer vocabulary or token rules changed"))
    if old.get("seed") != new.get("seed"):
        out.append((Reason.PARAM_CHANGED, f"seed {_fmt(old.get('seed'))} -> {_fmt(new.get('seed'))}"))
    om, nm = old.get("models", []), new.get("models", [])
    if om != nm or len(old.get("inputs", [])) != len(new.get("inputs", [])):
        out.append((Reason.INPUT_CHANGED, f"models [{', '.join(om)}] -> [{', '.join(nm)}]"))
    else:
        for i, label in enumerate(nm):
            if old["inputs"][i] != new["inputs"][i]:
                what = (
                    "tensor " + new["tensors"][i]
                    if old.get("tensors", [None] * len(nm))[i] != new["tensors"][i]
                    else "content"
                )
                out.append((Reason.INPUT_CHANGED, f"{label} ({what}) changed"))
            opm = old.get("per_model", [{}] * len(nm))[i] if i < len(old.get("per_model", [])) else {}
            npm = new.get("per_model", [])[i]
            for k in sorted(set(opm) | set(npm)):
                if opm.get(k) != npm.get(k):
                    out.append((Reason.PARAM_CHANGED, f"{k} of {label} {_fmt(opm.get(k))} -> {_fmt(npm.get(k))}"))
    if old.get("base_index") != new.get("base_index") and not any(r is Reason.INPUT_CHANGED for r, _ in out):
        out.append((Reason.INPUT_CHANGED, "base model changed"))
    if not out:
        return Reason.KEY_FORMAT, ("key format or embedding policy changed",)
    return out[0][0], tuple(d for _, d in out)


def compare(kp: KeyedPlan, aux_key: str, *, force: bool = False) -> TargetStatus:
    """Decide what of one target is stale, and which shards to rewrite or reuse."""
    plan = kp.plan
    man = read_manifest(plan.out_dir)
    if man is not None and kp.deferred is not None:  # built meanwhile (another process): key it now
        kp.deferred.complete()
    st = TargetStatus(kp, man, aux_key=aux_key)
    modified: set[str] = set()
    if man is not None:
        for shard, rec in man.shards.items():
            now = shard_stat(os.path.join(plan.out_dir, shard))
            if now is None or now["size"] != rec.get("size") or now["mtime_ns"] != rec.get("mtime_ns"):
                modified.add(shard)
    for job in plan.jobs:
        key = kp.keys.get(job.name)  # None only while deferred, i.e. with no output folder
        if force:
            st.stale[job.name] = Stale(job.name, Reason.FORCED)
        elif man is None:
            st.stale[job.name] = Stale(job.name, Reason.MISSING_OUTPUT)
        elif job.name not in man.tensors:
            st.stale[job.name] = Stale(job.name, Reason.NEW_TENSOR)
        elif man.tensors[job.name].get("key") != key:
            reason, details = diff_recipe(man.tensors[job.name].get("recipe", {}), kp.recipes[job.name])
            st.stale[job.name] = Stale(job.name, reason, details)
        elif man.tensors[job.name].get("shard") in modified:
            st.stale[job.name] = Stale(job.name, Reason.OUTPUT_MODIFIED, (man.tensors[job.name]["shard"],))
    if man is not None:
        planned = {j.name for j in plan.jobs}
        st.removed = sorted(n for n in man.tensors if n not in planned)
    new_shards: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for job in plan.jobs:
        new_shards[plan.shard_of(job)].append((job.name, kp.keys.get(job.name, "")))
    old_shards: dict[str, list[tuple[str, str]]] = defaultdict(list)
    if man is not None:
        for name, rec in man.tensors.items():
            old_shards[rec.get("shard", "")].append((name, rec.get("key", "")))
    for shard, content in new_shards.items():
        same = sorted(content) == sorted(old_shards.get(shard, [])) and shard not in modified
        (st.reuse_shards if same and not force else st.write_shards).add(shard)
    st.aux_stale = force or man is None or man.aux_key != aux_key
    return st


def in_previous_output(st: TargetStatus) -> dict[str, str]:
    """Tensors of shards to be rewritten that the current output folder already holds, up to
    date (the same key, in a shard unchanged on disk: :func:`compare` found them not stale):
    name -> that shard's path.

    Why: a rewritten shard's unchanged tensors normally come from the cache; when their blobs
    were evicted (a model larger than the cache limit), copying them from the previous version
    of the folder costs what reading a blob does, instead of recomputing them."""
    if st.manifest is None:
        return {}
    plan, held = st.kp.plan, st.manifest.tensors
    return {
        job.name: os.path.join(plan.out_dir, held[job.name]["shard"])
        for job in plan.jobs
        if plan.shard_of(job) in st.write_shards and job.name not in st.stale and job.name in held
    }
