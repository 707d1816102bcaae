"""Content keys for a planned target: input digests (via the stat-cache) and Merkle node keys.

A key covers exactly what determines a tensor's bytes: method and version, resolved parameters,
the keys of its inputs in order, dtypes, and the seed for random methods. Model names and file
paths do not enter it, so renaming a model or moving a folder rebuilds nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mergefile.io.hub import hf_blob_sha256
from mergefile.methods.apply import has_stages, stage_params
from mergefile.methods.base import Method
from mergefile.plan.jobs import TargetPlan, TensorJob
from mergefile.store.keys import input_key, key_of


@dataclass
class KeyedPlan:
    """A plan with every key computed: what the build and ``--explain`` compare."""

    plan: TargetPlan
    input_keys: dict[tuple[int, str], str]
    keys: dict[str, str] = field(default_factory=dict)  # output tensor -> key
    recipes: dict[str, dict[str, Any]] = field(default_factory=dict)
    # set while keys are still to be taken as the build reads the inputs (run/deferred.py)
    deferred: Any = field(default=None, repr=False)


def _random(method: Method) -> bool:
    return method.random or (method.stage is not None and method.stage.random)


def job_payload(job: TensorJob, method: Method, in_keys: list[str]) -> dict[str, Any]:
    """The key preimage of one output tensor (``vocab``: only for re-indexed embeddings)."""
    payload = {
        "method": method.name,
        "version": method.version,
        "params": dict(job.params),
        "per_model": [dict(p) for p in job.per_model],
        "inputs": in_keys,
        "base_index": job.base_index,
        "dtype": job.dtype,
        "out_dtype": job.out_dtype,
        "embed": method.embed.value if job.is_embed else None,
        "seed": job.seed if _random(method) else None,
    }
    if job.vocab is not None:
        payload["vocab"] = job.vocab
    return payload


def stage_key(
    method: Method, params: Mapping[str, Any], x_key: str, base_key: str, dtype: str | None, seed: int
) -> str:
    """Key of a per-model stage output (e.g. one model's sparsified task vector)."""
    assert method.stage is not None
    return key_of(
        "stage",
        {
            "method": method.name,
            "version": method.version,
            "stage": method.stage.name,
            "params": dict(params),
            "x": x_key,
            "base": base_key,
            "dtype": dtype,
            "seed": seed if method.stage.random else None,
        },
    )


def hub_digests(file: str, infos) -> dict[str, str] | None:
    """Tensor digests of a file in the Hugging Face cache without reading it: the blob's sha256
    (which the hub verified on download) and the tensor's byte range. None outside the cache."""
    sha = hf_blob_sha256(file)
    if sha is None:
        return None
    return {i.name: f"sha256:{sha}:{i.begin}-{i.end}" for i in infos}


def stage_inputs(job: TensorJob, kp: KeyedPlan) -> list[str]:
    """Input keys as a job's stages see them: re-indexed inputs get keys of their own."""
    in_keys = [kp.input_keys[(r.model, r.tensor)] for r in job.inputs]
    if job.vocab is not None:
        from mergefile.run.embed_remap import remapped_keys

        in_keys = remapped_keys(in_keys, job.vocab)
    return in_keys


def stage_plan(method: Method, job: TensorJob, in_keys: list[str]) -> list[tuple[int, dict[str, Any], str]]:
    """``(input index, stage parameters, stage key)`` for every non-base input of a staged job.

    Which parameters reach a stage is ``methods.apply.stage_params``, the definition the stage
    itself runs with; the build keys its stages with this and ``cache gc`` keeps what it names,
    so none of them can disagree.
    """
    b = job.base_index
    if not has_stages(method, len(job.inputs), b):
        return []
    params = dict(job.params)
    out = []
    for i in range(len(job.inputs)):
        if i == b:
            continue
        sp = stage_params(method, dict(job.per_model[i]), params)
        out.append((i, sp, stage_key(method, sp, in_keys[i], in_keys[b], job.dtype, job.seed)))
    return out


# Files hashed side by side: xxh3 releases the GIL, and a few reads in flight keep an SSD busier
# than one (4 streams: ~1.7x one on the bench machine's disk).
HASH_THREADS = 4


def compute_input_keys(plan: TargetPlan, stat, upstream: Mapping[str, KeyedPlan]) -> dict[tuple[int, str], str]:
    """Input tensor keys: from the stat-cache for files, from upstream keys for targets."""
    needed: dict[int, set[str]] = defaultdict(set)
    for job in plan.jobs:
        for ref in job.inputs:
            needed[ref.model].add(ref.tensor)
    _prehash([(plan.inputs[idx], names) for idx, names in needed.items()], stat)
    keys: dict[tuple[int, str], str] = {}
    for idx, names in needed.items():
        for n, k in model_keys(plan.inputs[idx], names, stat, upstream).items():
            keys[(idx, n)] = k
    return keys


def _prehash(models: list[tuple[Any, set[str]]], stat) -> None:
    """Fill the stat-cache for every plain input file at once, several files in parallel.

    ``model_keys`` then finds each file's digests in the cache; files it has already are a
    lookup here too, so a no-op pays only the stat calls.
    """
    work: dict[str, list] = {}
    for model, names in models:
        if getattr(model, "source", None) is not None or model.target is not None:
            continue
        by_file: dict[str, list] = defaultdict(list)
        for info in model.tensors.values():
            by_file[info.file].append(info)
        for f in {model.tensors[n].file for n in names}:
            if hf_blob_sha256(f) is None:
                work[f] = by_file[f]
    if len(work) < 2:
        return
    from concurrent.futures import ThreadPoolExecutor

    # Last files first: the build then reads the first files (first layers) first, and finds them
    # the most recently read, still in the page cache, when the inputs do not all fit in it.
    # (In file order, LRU would have evicted exactly the pages needed next, all the way through.)
    with ThreadPoolExecutor(min(HASH_THREADS, len(work)), thread_name_prefix="mergebuild-hash") as pool:
        for _ in pool.map(lambda f: stat.digests(f, work[f]), sorted(work, reverse=True)):
            pass


def model_keys(model, names, stat, upstream: Mapping[str, KeyedPlan]) -> dict[str, str]:
    """Keys of tensors ``names`` of one input model (an ``InputModel``)."""
    if getattr(model, "source", None) is not None:  # derived tensors (LoRA applied, MoE gates)
        return model.source.input_keys(names, stat, upstream)
    if model.target is not None:
        up = upstream[model.target].keys
        return {n: up[n] for n in names}
    keys: dict[str, str] = {}
    by_file: dict[str, list] = defaultdict(list)
    for info in model.tensors.values():
        by_file[info.file].append(info)
    files = {model.tensors[n].file for n in names}
    for f in sorted(files):
        digests = hub_digests(f, by_file[f]) or stat.digests(f, by_file[f])
        for n in names:
            info = model.tensors[n]
            if info.file == f:
                keys[n] = input_key(digests[n], info.dtype, info.shape)
    return keys


def key_plan(plan: TargetPlan, stat, upstream: Mapping[str, KeyedPlan]) -> KeyedPlan:
    """Compute every output tensor's key and recorded recipe. Reads no tensor data."""
    kp = KeyedPlan(plan, compute_input_keys(plan, stat, upstream))
    method = plan.method
    for job in plan.jobs:
        in_keys = [kp.input_keys[(r.model, r.tensor)] for r in job.inputs]
        payload = job_payload(job, method, in_keys)
        kp.keys[job.name] = key_of("tensor", payload)
        kp.recipes[job.name] = recipe_of(plan, job, payload)
    return kp


def recipe_of(plan: TargetPlan, job: TensorJob, payload: dict[str, Any]) -> dict[str, Any]:
    """The recipe recorded in the manifest: the key preimage plus the names ``--explain`` shows."""
    return {
        **payload,
        "models": [plan.inputs[r.model].label for r in job.inputs],
        "tensors": [r.tensor for r in job.inputs],
    }
