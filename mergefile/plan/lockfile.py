"""``Mergefile.lock``: every hub model pinned to a commit, every input file to a digest.

A lock makes a recipe reproducible: builds resolve a locked hub reference to its commit (the
:class:`~mergefile.plan.inputs.ModelResolver` gets the pins), and warn, naming what changed,
when the recipe uses a model the lock does not know or a pinned file's digest differs.

Digests cost nothing on the rebuild path: files in the Hugging Face cache are named by their
sha256 (LFS) or git sha1, local weight files get a digest of their per-tensor digests from the
stat-cache (which the build keeps anyway), and small files (config, tokenizer) are hashed.
The file is JSON with sorted keys, so it diffs well and is stable across runs.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergefile.errors import UserError
from mergefile.plan.inputs import InputModel, hub_key

LOCK_VERSION = 1
# Non-weight files whose bytes reach the output folder (config, tokenizer, generation config).
SMALL_FILES = ("config.json", "generation_config.json")
Digests = Callable[[str, Sequence[Any]], dict[str, str]]  # StatCache.digests(file, infos)


@dataclass
class Lockfile:
    """The parsed lock: ``models`` maps a model's lock key to its pinned record."""

    path: Path
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def pins(self) -> dict[str, str]:
        """hub key -> commit, what the resolver needs."""
        return {k: v["commit"] for k, v in self.models.items() if k.startswith("hf:") and v.get("commit")}

    def to_json(self) -> str:
        return json.dumps({"version": LOCK_VERSION, "models": self.models}, indent=2, sort_keys=True) + "\n"


def lock_path(mf_path: str | Path) -> Path:
    """``Mergefile`` -> ``Mergefile.lock``, next to the recipe."""
    p = Path(mf_path)
    return p.with_name(p.name + ".lock")


def read_lock(path: str | Path) -> Lockfile | None:
    """The lock at ``path``; None when there is none.

    Raises:
        UserError: the file exists but is not a lock this version understands.
    """
    p = Path(path)
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text())
        models = data["models"]
        ok = data.get("version") == LOCK_VERSION and isinstance(models, dict)
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise UserError(f"'{p}' is not a valid mergebuild lock file", hint="delete it and run `mergebuild lock`")
    return Lockfile(p, models)


def lock_for(mf) -> Lockfile | None:
    """The lock beside a parsed recipe (None for recipes from a string)."""
    if mf.path in ("", "<string>"):
        return None
    return read_lock(lock_path(mf.path))


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _weights_digest(infos: Sequence[Any], digests: Digests) -> str:
    """A file's digest from its per-tensor digests (names, layout and bytes, not the file's)."""
    got = digests(infos[0].file, infos)
    rows = sorted((i.name, i.dtype, list(i.shape), got[i.name]) for i in infos)
    return "tensors:" + hashlib.blake2b(json.dumps(rows).encode(), digest_size=16).hexdigest()


def model_key(model: InputModel, base_dir: Path) -> str:
    """Lock key of an input: ``hf:org/name[@rev]`` for hub models, ``path:<folder>`` otherwise."""
    if model.hub is not None:
        return hub_key(*model.hub)
    rel = os.path.relpath(model.path, base_dir)
    return "path:" + (model.path if rel.startswith("..") else Path(rel).as_posix())


def model_record(model: InputModel, digests: Digests) -> dict[str, Any]:
    """The pinned record of one input model: commit (hub) and a digest per file the merge uses."""
    from mergefile.io.hf_folder import TOKENIZER_FILES
    from mergefile.io.hub import hf_blob_digest, snapshot_of

    names: dict[str, str] = {}  # real path -> name in the folder
    for name in sorted(os.listdir(model.path)):
        full = os.path.join(model.path, name)
        if os.path.isfile(full):
            names.setdefault(os.path.realpath(full), name)
    by_file: dict[str, list] = {}
    for info in model.tensors.values():
        by_file.setdefault(info.file, []).append(info)
    files: dict[str, str] = {}
    for real, infos in by_file.items():
        name = names.get(real, os.path.basename(real))
        files[name] = hf_blob_digest(real) or _weights_digest(infos, digests)
    for name in (*SMALL_FILES, *TOKENIZER_FILES):
        full = os.path.join(model.path, name)
        if os.path.isfile(full):
            files[name] = hf_blob_digest(os.path.realpath(full)) or _sha256(full)
    record: dict[str, Any] = {"files": files}
    if model.hub is not None:
        snap = snapshot_of(model.path)
        record.update(repo=model.hub[0], revision=model.hub[1], commit=snap[1] if snap else None)
    return record


def input_models(plans: Iterable[Any]) -> list[InputModel]:
    """The distinct file-backed inputs of some plans (other targets' outputs are not locked)."""
    seen: dict[str, InputModel] = {}
    for plan in plans:
        for m in plan.inputs:
            if m.target is None:
                seen.setdefault(m.path, m)
    return list(seen.values())


def make_lock(path: Path, plans: Iterable[Any], digests: Digests, base_dir: Path) -> Lockfile:
    """A fresh lock for the inputs of ``plans``."""
    models = {model_key(m, base_dir): model_record(m, digests) for m in input_models(plans)}
    return Lockfile(path, models)


def diff_lock(old: Lockfile, new: Lockfile, *, partial: bool = False) -> list[tuple[str, str]]:
    """What differs between a lock and the state now: (model key, words); empty when current.

    Args:
        partial: ``new`` covers only some targets, so entries it lacks are not reported unused.
    """
    name = old.path.name
    out: list[tuple[str, str]] = []
    for key in sorted(set(old.models) | set(new.models)):
        o, n = old.models.get(key), new.models.get(key)
        if o is None:
            out.append((key, f"{key} is not in {name} (run `mergebuild lock`)"))
            continue
        if n is None:
            if not partial:
                out.append((key, f"{name} pins {key}, which no target uses any more"))
            continue
        if o.get("commit") != n.get("commit"):
            out.append((key, f"{key}: locked commit {o.get('commit')} but resolved {n.get('commit')}"))
        of, nf = o.get("files", {}), n.get("files", {})
        for f in sorted(set(of) | set(nf)):
            if f not in nf:
                out.append((key, f"{key}: {f} is gone (locked {_short(of[f])})"))
            elif f not in of:
                out.append((key, f"{key}: {f} is new (not in {name})"))
            elif of[f] != nf[f]:
                out.append((key, f"{key}: {f} changed ({_short(of[f])} -> {_short(nf[f])})"))
    return out


def _short(digest: str) -> str:
    kind, _, hexes = digest.partition(":")
    return f"{kind}:{hexes[:12]}" if hexes else digest


def check_plans(lock: Lockfile, plans: Sequence[Any], digests: Digests, base_dir: Path) -> None:
    """Add a warning to the first plan using each input that the lock does not match."""
    now = make_lock(lock.path, plans, digests, base_dir)
    msgs = diff_lock(lock, now, partial=True)
    if not msgs:
        return
    owner: dict[str, Any] = {}
    for plan in plans:
        for m in plan.inputs:
            if m.target is None:
                owner.setdefault(model_key(m, base_dir), plan)
    for key, msg in msgs:
        owner.get(key, plans[0]).warnings.append(f"{lock.path.name} is out of date: {msg}")
