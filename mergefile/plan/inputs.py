"""Input models: local folders, Hugging Face Hub snapshots, and other targets' outputs.

Only headers and config.json are read here: planning never touches tensor data.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergefile.errors import ConfigError, Loc, UserError, did_you_mean, unknown
from mergefile.plan.kinds import on_load
from mergefile.syntax.ast import AutoRef, HfRef, PathRef, Ref, Sym

HUB_PATTERNS = [
    "*.safetensors",
    "*.safetensors.index.json",
    "*.json",
    "tokenizer.model",
    "*.txt",
    "*.jinja",
    "*.tiktoken",
]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class TensorMeta:
    """What planning needs of a tensor that does not exist yet (another target's output)."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        from mergefile.io.header import DTYPE_SIZES

        n = 1
        for s in self.shape:
            n *= s
        return n * DTYPE_SIZES[self.dtype]


@dataclass
class InputModel:
    """One input of a merge, whatever its origin. ``tensors`` values have name/dtype/shape."""

    label: str
    path: str  # folder holding it (a model folder, or a target's output folder)
    config: dict
    tensors: Mapping[str, Any]
    target: str | None = None  # set when it is another target's output
    hub: tuple[str, str | None] | None = None  # (repo, revision) when it came from the hub
    layout: Any = field(default=None, repr=False)
    # Derived tensors (a LoRA applied on load, MoE gate vectors): an object with
    # input_keys(names, stat, upstream) -> {name: key} and load(name, key, blobs, reader) ->
    # (tensor, bytes read); see mergefile.targets.lora_input.
    source: Any = field(default=None, repr=False)
    arch: str | None = None  # override_architecture: the class it is read as (config says so too)
    modules: Any = field(default=None, repr=False)

    def get_layout(self):
        if self.layout is None:
            from mergefile.arch import layer_layout

            self.layout = layer_layout(self.tensors.keys(), self.config, self.arch)
        return self.layout

    def get_modules(self):
        """``arch.ModelModules`` when its architecture has several modules (a VLM, T5), else None."""
        if self.modules is None:
            from mergefile.arch.families import modular_for
            from mergefile.arch.modular import model_modules

            mod = modular_for(self.config, self.arch)
            self.modules = model_modules(self.tensors.keys(), self.config, mod) if mod is not None else False
        return self.modules or None


@dataclass
class ResolveOptions:
    allow_pickle: bool = False
    convert_dir: str | None = None
    offline: bool | None = None
    allow_crimes: bool = False  # merge models of different architectures
    pins: dict[str, str] = field(default_factory=dict)  # hub_key(repo, revision) -> locked commit


def hub_key(repo: str, revision: str | None) -> str:
    """How a lockfile names a hub reference: ``hf:org/name`` or ``hf:org/name@revision``."""
    return f"hf:{repo}@{revision}" if revision else f"hf:{repo}"


def parse_model_string(text: str, loc: Loc | None = None) -> tuple[str, str | None]:
    """``path_or_id[@revision]`` -> (path_or_id, revision). LoRA suffixes are not supported yet."""
    if "+" in text:
        raise ConfigError(f"model reference '{text}' applies a LoRA ('+'); LoRA inputs are not supported yet", loc)
    if text.count("@") > 1:
        raise ConfigError(f"bad model reference '{text}': more than one '@revision'", loc)
    name, _, rev = text.partition("@")
    if not name:
        raise ConfigError(f"bad model reference '{text}'", loc)
    return name, (rev or None)


def download_hub(repo: str, revision: str | None, loc: Loc | None, offline: bool | None = None) -> str:
    """Local folder of a hub model: only the files a merge needs, honouring HF_HUB_OFFLINE."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - dependency declared
        raise UserError(f'huggingface_hub is needed for hf("{repo}")') from e
    from mergefile.io.hub import hub_cache_dir

    kwargs: dict[str, Any] = {"repo_id": repo, "revision": revision, "allow_patterns": HUB_PATTERNS}
    if hub_cache_dir():
        kwargs["cache_dir"] = hub_cache_dir()
    if offline or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        kwargs["local_files_only"] = True
    try:
        return snapshot_download(**kwargs)
    except Exception as e:  # the hub library raises many types; all mean "cannot get it"
        rev = f"@{revision}" if revision else ""
        raise UserError(
            f"cannot resolve hub model '{repo}{rev}': {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            loc,
            "offline? the model must already be in the local Hugging Face cache (HF_HUB_OFFLINE=1)",
        ) from None


class ModelResolver:
    """Turns references into ``InputModel``s, memoised by folder."""

    def __init__(
        self,
        models: Mapping[str, Ref],
        base_dir: Path,
        target_output: Callable[[str], InputModel | None],
        target_names: set[str],
        options: ResolveOptions | None = None,
    ):
        self.models = dict(models)
        self.base_dir = base_dir
        self.target_output = target_output
        self.target_names = target_names
        self.options = options or ResolveOptions()
        self._dirs: dict[str, InputModel] = {}
        self.folders: list[str] = []  # every folder opened (models, adapters): a no-op stamp watches them
        self.unpinned_hub = False  # a hub reference that may move (a branch, not offline, not locked)
        self.notes: list[str] = []  # paths found by the YAML-folder fallback (syntax/model_paths.py)
        self.pending_notes: list[str] = []

    def resolve(self, ref: Ref, loc: Loc | None = None, label: str | None = None) -> InputModel:
        arch = getattr(ref, "architecture", None)
        if arch is not None:  # mergekit's override_architecture
            from dataclasses import replace

            return self._with_arch(self.resolve(replace(ref, architecture=None), loc, label), arch, ref.loc or loc)
        lora = getattr(ref, "lora", None)  # model = BASE + LORA (mergekit "model+lora")
        if lora is not None:
            return self._with_lora(ref, lora, loc, label)
        if isinstance(ref, Sym):
            return self._resolve_name(ref, loc)
        if isinstance(ref, PathRef):
            base = Path(ref.loc.file).parent if ref.loc and ref.loc.file not in ("<string>", "") else self.base_dir
            return self._open_dir((base / ref.path), label or ref.path, ref.loc or loc)
        if isinstance(ref, HfRef):
            revision = self.options.pins.get(hub_key(ref.repo, ref.revision), ref.revision)  # Mergefile.lock
            path = download_hub(ref.repo, revision, ref.loc or loc, self.options.offline)
            self._note_hub(revision, path)
            m = self._open_dir(Path(path), label or ref.repo, ref.loc or loc)
            m.hub = (ref.repo, ref.revision)
            return m
        if isinstance(ref, AutoRef):
            name, rev = parse_model_string(ref.text, ref.loc or loc)
            local = Path(ref.base_dir) / name
            found = self._local(ref, name) if rev is None else None
            if found is not None:
                return self._open_dir(found, label or ref.text, ref.loc or loc)
            if name in self.target_names:
                return self._resolve_name(Sym(name, ref.loc), loc)
            if not _HUB_ID.match(name):
                raise ConfigError(
                    f"model '{ref.text}' is neither a local folder ({local}) nor a hub id",
                    ref.loc or loc,
                    _where_hint(ref),
                )
            return self.resolve(HfRef(name, rev, ref.loc), loc, label or ref.text)
        raise ConfigError(f"not a model reference: {ref!r}", loc)

    def _with_arch(self, model: InputModel, arch: str, loc: Loc | None) -> InputModel:
        """``model`` read as class ``arch``: its family follows the class, and its config (the
        output's, when it is the donor) names it, as mergekit's ``override_architecture`` does."""
        from mergefile.arch import known_architectures

        known = known_architectures()
        if arch not in known:
            hint = did_you_mean(arch, known) or "known: " + ", ".join(known)
            raise ConfigError(f"unknown architecture class '{arch}' (override_architecture)", loc, hint)
        key = f"{id(model)}:{arch}"
        if key not in self._dirs:
            config = dict(model.config, architectures=[arch])
            self._dirs[key] = InputModel(
                label=model.label,
                path=model.path,
                config=config,
                tensors=model.tensors,
                target=model.target,
                hub=model.hub,
                source=model.source,
                arch=arch,
            )
        return self._dirs[key]

    def _with_lora(self, ref: Ref, lora: Ref, loc: Loc | None, label: str | None) -> InputModel:
        """``BASE + ADAPTER``: the base with a PEFT LoRA applied on load (mergefile.targets.lora_input)."""
        from dataclasses import replace

        here = getattr(lora, "loc", None) or ref.loc or loc
        base = self.resolve(replace(ref, lora=None), loc, label)
        if base.source is not None:
            raise ConfigError(f"model '{base.label}' already has a LoRA applied; apply one adapter per model", here)
        if isinstance(lora, PathRef):
            folder = (
                Path(lora.loc.file).parent / lora.path
                if lora.loc and lora.loc.file not in ("<string>", "")
                else self.base_dir / lora.path
            )
        elif isinstance(lora, HfRef):
            folder = Path(download_hub(lora.repo, lora.revision, here, self.options.offline))
            self._note_hub(lora.revision, str(folder))
        elif isinstance(lora, AutoRef):
            name, rev = parse_model_string(lora.text, here)
            folder = (self._local(lora, name) if rev is None else None) or Path(lora.base_dir) / name
            if not folder.is_dir() or rev is not None:
                if not _HUB_ID.match(name):
                    raise ConfigError(f"LoRA '{lora.text}' is neither a local folder ({folder}) nor a hub id", here)
                folder = Path(download_hub(name, rev, here, self.options.offline))
                self._note_hub(rev, str(folder))
        else:
            raise ConfigError(f"not a LoRA adapter reference: {lora!r}", here)
        if not folder.is_dir():
            raise UserError(f"LoRA adapter folder '{folder}' does not exist", here)
        self.folders.append(os.path.realpath(folder))
        key = f"{os.path.realpath(base.path)}+{os.path.realpath(folder)}"
        if key not in self._dirs:
            self._dirs[key] = on_load("lora")(base, str(folder), label or f"{base.label}+{folder.name}", here)
        return self._dirs[key]

    def _local(self, ref: AutoRef, name: str) -> Path | None:
        """A mergekit path's folder (syntax/model_paths.py); a fallback's note is kept once."""
        from mergefile.syntax.model_paths import local_folder

        found = local_folder(ref, name)
        if found is None:
            return None
        if found.note and found.note not in self.notes:
            self.notes.append(found.note)
            self.pending_notes.append(found.note)
        return found.path

    def take_notes(self) -> list[str]:
        """Notes not yet handed to a plan (each appears in the first plan that met it)."""
        out, self.pending_notes = self.pending_notes, []
        return out

    def _note_hub(self, revision: str | None, snapshot: str) -> None:
        """A hub download: its ``refs/`` folder says where a branch points, so watch it too."""
        refs = Path(snapshot).parent.parent / "refs"
        self.folders.append(str(refs))
        offline = self.options.offline
        if offline is None:
            offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        if not offline and not (revision and re.fullmatch(r"[0-9a-f]{40}", revision)):
            self.unpinned_hub = True

    def _resolve_name(self, ref: Sym, loc: Loc | None) -> InputModel:
        name = ref.name
        if name in self.models:
            return self.resolve(self.models[name], ref.loc or loc, label=name)
        if name in self.target_names or name.rstrip("/") in self.target_names:
            out = self.target_output(name.rstrip("/"))
            if out is None:
                raise ConfigError(f"target '{name}' cannot be used as a model (it is a group)", ref.loc or loc)
            return out
        raise unknown("model", name, list(self.models) + sorted(self.target_names), ref.loc or loc)

    def _open_dir(self, path: Path, label: str, loc: Loc | None) -> InputModel:
        from mergefile.io.model_dir import ModelDir

        real = os.path.realpath(path)
        if real in self._dirs:
            return self._dirs[real]
        self.folders.append(real)
        if not os.path.isdir(real):
            raise UserError(f"model folder '{path}' does not exist", loc)
        try:
            md = ModelDir.open(real, allow_pickle=self.options.allow_pickle, convert_dir=self.options.convert_dir)
        except UserError as e:
            if e.loc is None and loc is not None:
                raise UserError(e.message, loc, e.hint) from None
            raise
        model = InputModel(label=label, path=md.path, config=md.config, tensors=md.tensors)
        self._dirs[real] = model
        return model


def _where_hint(ref: AutoRef) -> str | None:
    """Where a mergekit path was looked for, when it came from a YAML file elsewhere."""
    from mergefile.syntax.model_paths import yaml_folder

    other = yaml_folder(ref)
    if other is None or os.path.realpath(other) == os.path.realpath(ref.base_dir):
        return None
    return (
        f"mergekit paths are read from the working directory ({ref.base_dir}), as mergekit reads them;"
        f" the YAML's folder ({other}) was tried too"
    )
