"""Assemble an output folder in a temp directory and swap it in atomically.

Unchanged shards are hard-linked from the previous version (no bytes copied); a changed shard
is written from memory as soon as its last tensor is computed (overlapping the rest of the
build), or streamed from the blob store, each blob's digest verified on the way. The folder appears
old or new, never half: on Linux the two directories are exchanged with renameat2, elsewhere
by two renames.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from mergefile._lazy import torch
from mergefile.io.writer import RawTensor
from mergefile.plan.card import card_texts
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


def aux_files(plan: TargetPlan, copy_tokenizer: bool = True, write_card: bool = True) -> AuxFiles:
    """The small files of ``plan``'s output; without the tokenizer's or the card's when told
    (mergekit's ``--no-copy-tokenizer``, ``--no-write-model-card``): the key follows."""
    from mergefile.io.header import code_name
    from mergefile.io.hf_folder import TOKENIZER_FILES

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
    for name in (*(() if spec or not copy_tokenizer else TOKENIZER_FILES), "generation_config.json"):
        p = src / name
        if p.is_file():
            copies[name] = str(p)
    digests = {name: xxhash.xxh3_128_hexdigest(Path(p).read_bytes()) for name, p in copies.items()}
    texts = plan.layout.card_texts(plan) if plan.layout is not None else card_texts(plan)
    if not write_card:
        texts = {k: v for k, v in texts.items() if k not in ("README.md", "mergebuild_config.yml")}
    digests.update({name: xxhash.xxh3_128_hexdigest(text.encode()) for name, text in texts.items()})
    payload = {"config": config, "files": digests, "recipe": plan.target.origin or ""}
    if spec is not None:
        payload["tokenizer"] = spec.key
    return AuxFiles(config, copies, key_of("aux", payload), texts, spec)


def hub_lineage(plan: TargetPlan, upstream: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The Hub ids ``plan`` derives from: its Hub inputs', and those of the targets it reads
    (``upstream``: target name -> its lineage), so a multi-stage merge's card names real bases."""
    ids: list[str] = []
    for m in plan.inputs:
        if m.hub:
            ids.append(m.hub[0])
        elif m.target is not None:
            ids.extend(upstream.get(m.target, ()))
    return tuple(dict.fromkeys(ids))


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


def _nbytes(t) -> int:
    return t.data.nbytes if isinstance(t, RawTensor) else t.nbytes


class OutputWriter:
    """One new version of ``plan.out_dir``, assembled in a private temp folder.

    A shard is written as soon as its last freshly computed tensor arrives (:meth:`add`), from
    memory, by a background thread that also fsyncs it, so writing overlaps computing instead of
    following it; :meth:`finish` writes the rest (shards of cache hits, streamed from verified
    blobs), links unchanged shards from the current folder, adds config, tokenizer and manifest,
    and swaps the folder in. The files are byte-for-byte what a one-pass write would give.

    Args:
        fetch: ``fetch(tensor_name)`` -> RawTensor (bytes, no torch) for a tensor not handed to
            :meth:`add` (the blob store, verified, or recomputed); called on the caller's thread only.
        fresh: names of the tensors that will arrive through :meth:`add`.
        keep_bytes: most bytes of arrived tensors held for shards still incomplete; beyond it a
            tensor is dropped and fetched again from its blob when its shard is written.
        spill: ``spill(tensor_name, tensor)`` for a tensor dropped so: stores it where ``fetch``
            finds it (a result the cache policy did not keep), and returns the bytes written.
    """

    QUEUE = 2  # shards handed to the writer thread and not yet on disk

    def __init__(
        self,
        plan: TargetPlan,
        keys: dict[str, str],
        recipes: dict[str, dict],
        reuse: set[str],
        aux: AuxFiles,
        fetch: Callable[[str], RawTensor],
        fresh: set[str] = frozenset(),
        keep_bytes: int = 0,
        spill: Callable[[str, Any], int] | None = None,
    ):
        from concurrent.futures import ThreadPoolExecutor

        self.plan, self.keys, self.recipes, self.reuse, self.aux, self.fetch = plan, keys, recipes, reuse, aux, fetch
        self.out_dir = plan.out_dir
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        clean_leftovers(self.out_dir)
        self.tmp = self.out_dir.parent / f".{self.out_dir.name}{TMP_TAG}{os.getpid()}"
        self.tmp.mkdir()
        self.by_shard: dict[str, list] = {}
        for job in plan.jobs:
            self.by_shard.setdefault(plan.shard_of(job), []).append(job)
        for jobs in self.by_shard.values():
            jobs.sort(key=lambda j: j.name)
        self.shard_of = {j.name: plan.shard_of(j) for j in plan.jobs}
        self.waiting = {
            sh: {j.name for j in jobs if j.name in fresh} for sh, jobs in self.by_shard.items() if sh not in reuse
        }
        self.held: dict[str, torch.Tensor | RawTensor] = {}
        self.held_bytes, self.keep_bytes, self.spill = 0, keep_bytes, spill
        self.spilled = 0  # bytes ``spill`` wrote
        self.written = 0
        self.done: set[str] = set()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mergebuild-publish")
        self._queued: list = []

    def add(self, name: str, tensor: torch.Tensor | RawTensor | None) -> None:
        """A freshly computed tensor, or its bytes (None: not kept; its blob is read when the
        shard is written)."""
        shard = self.shard_of[name]
        left = self.waiting.get(shard)
        if left is None:
            return
        left.discard(name)
        if tensor is not None:
            if not left or self.held_bytes + _nbytes(tensor) <= self.keep_bytes:  # the last one is written now
                self.held[name] = tensor
                self.held_bytes += _nbytes(tensor)
            elif self.spill is not None:
                self.spilled += self.spill(name, tensor)
        if not left:
            self._write(shard)

    def _write(self, shard: str) -> None:
        from mergefile.io.writer import raw_tensor

        entries = []
        for job in self.by_shard[shard]:
            t = self.held.pop(job.name, None)
            if t is None:
                raw = self.fetch(job.name)
            else:
                self.held_bytes -= _nbytes(t)
                raw = t if isinstance(t, RawTensor) else raw_tensor(t)
            del t
            shape = raw.shape if getattr(self.plan.layout, "dynamic_shapes", False) else tuple(job.result_shape)
            entries.append((job.name, job.result_dtype, shape, lambda d=raw.data: d))
        while len(self._queued) >= self.QUEUE:  # back-pressure: bounded memory in flight
            self.written += self._queued.pop(0).result()
        self._queued.append(self._pool.submit(_write_shard, self.tmp / shard, entries))
        self.done.add(shard)

    def finish(self) -> int:
        """Write what is left, publish the folder; returns bytes written to shards."""
        from mergefile.io.hf_folder import write_config
        from mergefile.io.writer import write_index

        plan, aux, tmp = self.plan, self.aux, self.tmp
        try:
            for shard in sorted(self.by_shard):
                if shard in self.reuse:
                    _link_or_copy(self.out_dir / shard, tmp / shard)
                elif shard not in self.done:
                    self._write(shard)
            while self._queued:
                self.written += self._queued.pop(0).result()
            man = Manifest(target=plan.name, aux_key=aux.key)
            weight_map: dict[str, str] = {}
            total = 0
            for shard, jobs in sorted(self.by_shard.items()):
                for job in jobs:
                    weight_map[job.name] = shard
                    total += job.nbytes
                    man.tensors[job.name] = {
                        "key": self.keys[job.name],
                        "shard": shard,
                        "recipe": self.recipes[job.name],
                    }
                man.shards[shard] = shard_stat(tmp / shard)
            if len(self.by_shard) > 1:
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
            swap_in(tmp, self.out_dir)
        except BaseException:
            self.abort()
            raise
        self._pool.shutdown()
        return self.written

    def abort(self) -> None:
        """Drop the temp folder (after the writer thread stops touching it)."""
        for f in self._queued:
            f.cancel()
        self._pool.shutdown(wait=True)
        self._queued.clear()
        self.held.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _write_shard(path: Path, entries: list) -> int:
    """Write one shard into the private temp folder and fsync it (on the writer thread)."""
    from mergefile.io.writer import write_safetensors

    n = write_safetensors(path, entries, metadata={"format": "pt"}, durable=False)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        if hasattr(os, "posix_fadvise"):  # on disk now: leave the page cache to the inputs
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return n


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
