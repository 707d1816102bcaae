"""``--reshard``: the search's input models, copied once into ``STORAGE/input_models``.

mergekit-evolve converts every input to one bfloat16 safetensors shard in the storage path
before searching, because its loader pays per shard and per pickle on every merge. Here each
input becomes one ``model.safetensors`` (plus its config, tokenizer and other small files) in
``STORAGE/input_models/NAME-ID/``, and every candidate is planned, built and scored from those
copies:

* a single safetensors file is hard-linked (copied across filesystems): no extra disk;
* shards are joined into one file, byte for byte;
* pickled weights (``--allow-pickle``) are converted once (the cache's ``converted/``) and
  linked or joined like safetensors;
* a hub model is copied out of the Hugging Face cache: Ray workers on any node that sees the
  storage path read it there, without resolving or downloading it themselves.

Tensors are copied bit for bit in their own dtype (mergekit casts to bfloat16): an input
tensor's key is the hash of its bytes, dtype and shape, so a local model's copies have the keys
of the original, and candidates, the tensor cache and the score cache are shared with a search
that reads the originals. (Tensors of a hub model are keyed by the hub's sha256 file names while
they are in the hub cache, and by their bytes once copied, so those keys differ; the merged
values do not.) ``ID`` is a digest of the source files' paths, sizes and modification times:
an input changed on disk is copied again, and its stale copy removed. A LoRA applied on load
(``model+lora``) stays applied on load, over the copied base.
"""

from __future__ import annotations

import mmap
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from mergefile.syntax.ast import ModelDecl, PathRef, Sym
from mergefile.targets.evolve.config import EvolveConfig

__all__ = ["INPUTS", "reshard_config", "reshard_model"]

INPUTS = "input_models"
RESHARD_VERSION = 1  # bump when the copies' layout changes, so old copies are not reused
WEIGHTS = "model.safetensors"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx", ".index.json")
_SAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


def genome_model_names(config: EvolveConfig) -> list[str]:
    """Names of every model a candidate can read: the genome's, its base, a tokenizer donor."""
    g = config.genome
    names = [name for name, _ in g.models]
    for pair in (g.base_model, g.tokenizer_source if isinstance(g.tokenizer_source, tuple) else None):
        if pair is not None and pair[0] not in names:
            names.append(pair[0])
    return names


def reshard_config(
    config: EvolveConfig,
    storage: str | Path,
    *,
    allow_pickle: bool = False,
    allow_crimes: bool = False,
    convert_dir: str | None = None,
    message=None,
) -> EvolveConfig:
    """``config`` with each input model declared at its copy in ``STORAGE/input_models``.

    Args:
        config: the search (its model declarations are replaced; nothing else changes).
        storage: the search's storage path.
        allow_pickle: read (and convert) pickled weights.
        allow_crimes: as for planning (only used to resolve the models).
        convert_dir: where pickles are converted (the cache's ``converted/``, as builds do).
        message: called with one line per model copied.

    Returns:
        The configuration candidates are planned from. Another target used as a genome model
        (a Mergefile target's output) is left as it is: it is a mergebuild output already.
    """
    from mergefile.plan.inputs import ResolveOptions
    from mergefile.plan.planner import Planner

    root = Path(storage) / INPUTS
    resolver = Planner(
        config.mergefile(),
        ResolveOptions(allow_pickle=allow_pickle, allow_crimes=allow_crimes, convert_dir=convert_dir),
    ).resolver
    decls = {s.name: s for s in config.statements if isinstance(s, ModelDecl)}
    copies: dict[str, ModelDecl] = {}
    for name in genome_model_names(config):
        decl = decls.get(name)
        if decl is None or isinstance(decl.ref, Sym):
            continue
        lora = getattr(decl.ref, "lora", None)
        model = resolver.resolve(replace(decl.ref, lora=None) if lora is not None else decl.ref, decl.loc, name)
        folder, made = reshard_model(model, name, root)
        if made and message is not None:
            message(f"resharded {name} into {folder}")
        copies[name] = replace(decl, ref=PathRef(str(folder), None, lora))
    statements = tuple(copies.get(s.name, s) if isinstance(s, ModelDecl) else s for s in config.statements)
    return replace(config, statements=statements)


def _source_id(model: Any) -> str:
    from mergefile.store.keys import key_of

    files = []
    for f in sorted({info.file for info in model.tensors.values()}):
        st = os.stat(f)
        files.append([os.path.realpath(f), st.st_size, st.st_mtime_ns])
    return key_of(
        "evolve-reshard", {"version": RESHARD_VERSION, "folder": os.path.realpath(model.path), "files": files}
    )[:16]


def reshard_model(model: Any, name: str, root: Path) -> tuple[Path, bool]:
    """Copy one resolved input (an ``InputModel``) to ``root/NAME-ID``; reuse a finished copy.

    Returns:
        The copy's folder, and whether it was made now.
    """
    stem = _SAFE.sub("_", name).strip("._") or "model"
    dest = root / f"{stem}-{_source_id(model)}"
    if not (dest / WEIGHTS).is_file():
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{dest.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            _write_weights(model, tmp / WEIGHTS)
            _copy_small_files(Path(model.path), tmp)
            shutil.rmtree(dest, ignore_errors=True)  # a half copy from an older layout
            os.rename(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        made = True
    else:
        made = False
    for old in root.glob(f"{stem}-*"):  # copies of an earlier version of this input
        if old != dest and old.is_dir() and re.fullmatch(rf"{re.escape(stem)}-[0-9a-f]{{16}}", old.name):
            shutil.rmtree(old, ignore_errors=True)
    return dest, made


def _write_weights(model: Any, out: Path) -> None:
    """One safetensors file of every tensor, bytes unchanged: a link when there is one file."""
    from mergefile.io.writer import write_safetensors

    infos = sorted(model.tensors.values(), key=lambda i: (i.file, i.begin))
    files = sorted({i.file for i in infos})
    if len(files) == 1:
        try:
            os.link(os.path.realpath(files[0]), out)
            return
        except OSError:  # another filesystem, or links not allowed: a plain copy
            shutil.copyfile(files[0], out)
            return
    maps: dict[str, tuple[Any, mmap.mmap]] = {}
    try:

        def fetch(info):
            if info.file not in maps:
                f = open(info.file, "rb")
                maps[info.file] = (f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
            return memoryview(maps[info.file][1])[info.begin : info.end]

        entries = [(i.name, i.dtype, tuple(i.shape), (lambda i=i: fetch(i))) for i in infos]
        write_safetensors(out, entries, {"format": "pt"})
    finally:
        for f, mm in maps.values():
            try:
                mm.close()
            except BufferError:  # a view is still referenced; the map closes when it is freed
                pass
            f.close()


def _copy_small_files(src: Path, dest: Path) -> None:
    """Config, tokenizer, generation config, custom code: every top-level file but weights."""
    from mergefile.io.hf_folder import TOKENIZER_DIRS

    for p in sorted(src.iterdir()):
        if p.is_file() and not p.name.endswith(_WEIGHT_SUFFIXES) and not p.name.startswith("."):
            shutil.copy2(p, dest / p.name)
        elif p.is_dir() and p.name in TOKENIZER_DIRS:
            shutil.copytree(p, dest / p.name)
