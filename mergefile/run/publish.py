"""Assemble an output folder in a temp directory and swap it in atomically.

Unchanged shards are hard-linked from the previous version (no bytes copied); changed shards
are streamed from the blob store, each blob's digest verified on the way. The folder appears
old or new, never half: on Linux the two directories are exchanged with renameat2, elsewhere
by two renames.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mergefile._lazy import torch
import xxhash

from mergefile.plan.jobs import TargetPlan
from mergefile.store.keys import key_of
from mergefile.store.manifest import MANIFEST, Manifest, shard_stat

TMP_TAG = ".mergebuild-tmp-"
OLD_TAG = ".mergebuild-old-"


@dataclass
class AuxFiles:
    """config.json and the donor's tokenizer/generation files, and their joint key."""

    config: dict
    copies: dict[str, str]  # file name -> source path
    key: str
    texts: dict[str, str] = field(default_factory=dict)  # file name -> content (model card, YAML)
    tokenizer: object = None  # plan.vocab.TokenizerSpec: a merged tokenizer written instead of copied


def aux_files(plan: TargetPlan) -> AuxFiles:
    from mergefile.io.hf_folder import TOKENIZER_FILES
    from mergefile.io.header import code_name

    config = json.loads(json.dumps(plan.config))
    codes = {j.result_dtype for j in plan.jobs}
    if len(codes) == 1:
        name = code_name(codes.pop())
        for k in ("torch_dtype", "dtype"):
            if k in config or k == "torch_dtype":
                config[k] = name
    copies: dict[str, str] = {}
    src = Path(plan.donor.path)
    spec = plan.vocab.tokenizer if plan.vocab is not None else None
    for name in (*(() if spec else TOKENIZER_FILES), "generation_config.json"):
        p = src / name
        if p.is_file():
            copies[name] = str(p)
    digests = {name: xxhash.xxh3_128_hexdigest(Path(p).read_bytes()) for name, p in copies.items()}
    texts = plan.layout.card_texts(plan) if plan.layout is not None else card_texts(plan)
    digests.update({name: xxhash.xxh3_128_hexdigest(text.encode()) for name, text in texts.items()})
    payload = {"config": config, "files": digests, "recipe": plan.target.origin or ""}
    if spec is not None:
        payload["tokenizer"] = spec.key
    return AuxFiles(config, copies, key_of("aux", payload), texts, spec)


def card_texts(plan: TargetPlan) -> dict[str, str]:
    """README.md (model card) and mergebuild_config.yml of an output, from its plan."""
    from mergefile.io.header import code_name
    from mergefile.io.hub import snapshot_of
    from mergefile.io.model_card import CardData, CardInput, ref_namer, render_card, render_mergekit_yaml

    bases = {j.inputs[j.base_index].model for j in plan.jobs if j.base_index is not None}
    inputs = []
    for i, m in enumerate(plan.inputs):
        snap = snapshot_of(m.path) if m.hub else None
        inputs.append(CardInput(m.label, m.hub[0] if m.hub else None, m.hub[1] if m.hub else None,
                                snap[1] if snap else None, m.target is not None, i in bases))
    codes = {j.result_dtype for j in plan.jobs}
    dtype = code_name(codes.pop()) if len(codes) == 1 else None
    t = plan.target
    is_yaml = bool(t.loc and str(t.loc.file).endswith((".yml", ".yaml")))
    card = CardData(plan.name, plan.method.name, plan.method.reference, plan.method.summary, tuple(inputs), dtype,
                    t.origin, "yaml" if is_yaml else "mergefile")
    namer = ref_namer({m.label: m.hub[0] for m in plan.inputs if m.hub})
    config = render_mergekit_yaml(t, namer, dtype, source_yaml=t.origin if is_yaml else None)
    return {"README.md": render_card(card), "mergebuild_config.yml": config}


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False when unsupported."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    rc = fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE)
    return rc == 0


def clean_leftovers(out_dir: Path) -> None:
    """Remove temp/old folders of earlier killed builds (we hold the output lock)."""
    parent = out_dir.parent
    if not parent.is_dir():
        return
    for p in parent.iterdir():
        if p.name.startswith(f".{out_dir.name}{TMP_TAG}") or p.name.startswith(f".{out_dir.name}{OLD_TAG}"):
            shutil.rmtree(p, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def swap_in(tmp: Path, out_dir: Path) -> None:
    """Publish ``tmp`` as ``out_dir``: exchange if it exists, else a plain rename."""
    _fsync_dir(tmp)
    if out_dir.exists() or out_dir.is_symlink():
        if _exchange(tmp, out_dir):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            old = out_dir.parent / f".{out_dir.name}{OLD_TAG}{os.getpid()}"
            os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out_dir)
    _fsync_dir(out_dir.parent)


def write_output(
    plan: TargetPlan,
    keys: dict[str, str],
    recipes: dict[str, dict],
    reuse: set[str],
    aux: AuxFiles,
    fetch: Callable[[str], torch.Tensor],
) -> int:
    """Write the whole new version of ``plan.out_dir``; returns bytes written to shards.

    ``fetch(tensor_name)`` returns the tensor for a shard being rewritten (from the blob store,
    verified, or recomputed). Reused shards are hard-linked from the current folder.
    """
    from mergefile.io.hf_folder import write_config
    from mergefile.io.writer import tensor_bytes, write_index, write_safetensors

    out_dir = plan.out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}{TMP_TAG}{os.getpid()}"
    tmp.mkdir()
    written = 0
    try:
        by_shard: dict[str, list] = {}
        for job in plan.jobs:
            by_shard.setdefault(plan.shard_of(job), []).append(job)
        man = Manifest(target=plan.name, aux_key=aux.key)
        weight_map: dict[str, str] = {}
        total = 0
        for shard, jobs in sorted(by_shard.items()):
            jobs = sorted(jobs, key=lambda j: j.name)
            if shard in reuse:
                _link_or_copy(out_dir / shard, tmp / shard)
            else:
                entries = []
                for job in jobs:
                    def get(name=job.name) -> memoryview:
                        return tensor_bytes(fetch(name))

                    if getattr(plan.layout, "dynamic_shapes", False):  # e.g. LoRA ranks cut by sv_epsilon
                        t = fetch(job.name)
                        entries.append((job.name, job.result_dtype, tuple(t.shape), lambda t=t: tensor_bytes(t)))
                        continue
                    entries.append((job.name, job.result_dtype, tuple(job.result_shape), get))
                written += write_safetensors(tmp / shard, entries, metadata={"format": "pt"})
            for job in jobs:
                weight_map[job.name] = shard
                total += job.nbytes
                man.tensors[job.name] = {"key": keys[job.name], "shard": shard, "recipe": recipes[job.name]}
            man.shards[shard] = shard_stat(tmp / shard)
        if len(by_shard) > 1:
            write_index(tmp, weight_map, total, metadata={"mergebuild": "1"})
        if plan.layout is None:
            write_config(aux.config, tmp)
        else:  # a target kind's own files (adapter_config.json, ...)
            plan.layout.write_files(tmp, aux.config)
        for name, src in aux.copies.items():
            shutil.copyfile(src, tmp / name)
        if aux.tokenizer is not None:
            from mergefile.run.tokenizer_out import write_tokenizer

            write_tokenizer(aux.tokenizer, tmp)
        for name, text in aux.texts.items():
            (tmp / name).write_text(text, encoding="utf-8")
        (tmp / MANIFEST).write_text(man.to_json())
        swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
