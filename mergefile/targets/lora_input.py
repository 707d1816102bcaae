"""A model with a LoRA adapter applied on load: mergekit's ``model+lora``.

In a Mergefile, ``model m = "./base" + "./adapter"`` (either side may be ``hf(...)``); in YAML,
``base+adapter``. The result is an input model like any other, whose tensors are the base's
except those the adapter touches (its LoRA modules, bias deltas, ``modules_to_save``). Those are
*derived tensors* keyed by (base tensor key, adapter key): the adapter key covers the digest of
every adapter tensor (through the stat-cache, like model files) and of ``adapter_config.json``.

On the first miss the whole adapter is merged once with peft (``merge_and_unload`` on the base
loaded through transformers) and every touched tensor is stored under its key, so later builds
and other targets read the merged tensors from the cache and never repeat the adapter math.
Tensors the adapter does not touch keep the base's key and are read from the base's files.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import xxhash

from mergefile._lazy import torch
from mergefile.errors import ConfigError, Loc, UserError
from mergefile.io.header import TensorInfo, read_header
from mergefile.plan.inputs import InputModel
from mergefile.plan.kinds import register_on_load
from mergefile.store.keys import key_of

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "LoraApplied", "apply_lora"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
VERSION = 1  # of the merge-on-load semantics: bump to re-merge every cached adapter
_PREFIX = "base_model.model."
_LORA_PARTS = (
    ".lora_A.weight",
    ".lora_B.weight",
    ".lora_embedding_A",
    ".lora_embedding_B",
    ".lora_magnitude_vector",
    ".lora_A",
    ".lora_B",
)


def touched_tensors(adapter_names: Iterable[str]) -> set[str]:
    """Base tensor names an adapter changes, from its tensor names (no data read)."""
    out: set[str] = set()
    for name in adapter_names:
        rest = name[len(_PREFIX) :] if name.startswith(_PREFIX) else name
        if rest.endswith(".lora_B.bias"):
            out.add(rest[: -len(".lora_B.bias")] + ".bias")
            continue
        for part in _LORA_PARTS:
            if rest.endswith(part):
                out.add(rest[: -len(part)] + ".weight")
                break
        else:
            out.add(rest.replace(".modules_to_save.", ".").replace(".original_module.", "."))
    return out


def apply_lora(base: InputModel, adapter_dir: str, label: str, loc: Loc | None) -> InputModel:
    """The input model ``base`` with the adapter in ``adapter_dir`` applied on load.

    Raises:
        UserError: the folder is not a safetensors PEFT LoRA adapter, or it touches no tensor
            of the base (wrong base model).
    """
    config_path = os.path.join(adapter_dir, ADAPTER_CONFIG)
    weights = os.path.join(adapter_dir, ADAPTER_WEIGHTS)
    if not os.path.isfile(config_path) or not os.path.isfile(weights):
        raise UserError(
            f"'{adapter_dir}' is not a PEFT adapter folder (needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})", loc
        )
    try:
        config = json.loads(open(config_path, encoding="utf-8").read())
    except ValueError as e:
        raise UserError(f"{config_path}: not JSON ({e})", loc) from None
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise UserError(f"{config_path}: peft_type {config.get('peft_type')!r} is not LORA", loc)
    infos, _ = read_header(weights)
    touched = touched_tensors(infos) & set(base.tensors)
    if not touched:
        raise UserError(
            f"adapter '{adapter_dir}' changes no tensor of model '{base.label}' (is it the adapter's base?)", loc
        )
    source = LoraApplied(base, os.path.realpath(adapter_dir), dict(infos), _digest(config_path), frozenset(touched))
    return InputModel(
        label=label, path=base.path, config=base.config, tensors=base.tensors, hub=base.hub, source=source
    )


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return xxhash.xxh3_128_hexdigest(f.read())


@dataclass(eq=False)
class LoraApplied:
    """The derived-tensor source of a ``model+lora`` input (see the module docstring)."""

    base: InputModel
    adapter_dir: str
    adapter_infos: dict[str, TensorInfo]
    config_digest: str
    touched: frozenset[str]
    keys: dict[str, str] = field(default_factory=dict)  # touched tensor -> key, filled when keyed
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def adapter_key(self, stat) -> str:
        from mergefile.run.plan_keys import hub_digests

        infos = list(self.adapter_infos.values())
        file = os.path.join(self.adapter_dir, ADAPTER_WEIGHTS)
        digests = hub_digests(file, infos) or stat.digests(file, infos)
        return key_of("adapter", {"config": self.config_digest, "tensors": dict(sorted(digests.items()))})

    def input_keys(self, names: Iterable[str], stat, upstream: Mapping[str, Any]) -> dict[str, str]:
        from mergefile.run.plan_keys import model_keys

        base_keys = model_keys(self.base, set(names), stat, upstream)
        adapter = self.adapter_key(stat)
        out = {}
        for n, k in base_keys.items():
            if n in self.touched:
                out[n] = key_of("lora_applied", {"version": VERSION, "base": k, "adapter": adapter})
                self.keys[n] = out[n]
            else:
                out[n] = k
        return out

    def file_tensor(self, name: str):
        """The file byte range of a tensor the adapter leaves alone (a remote task reads it
        directly), or None when it is made here."""
        if name in self.touched or self.base.source is not None or self.base.target is not None:
            return None
        return self.base.tensors[name]

    def load(self, name: str, key: str, blobs, reader) -> tuple[torch.Tensor, int]:
        if name not in self.touched:
            return _plain(self.base, name, key, blobs, reader)
        t = blobs.get(key)
        if t is None:
            with self._lock:  # one merge per process, however many jobs miss at once
                t = blobs.get(key)
                if t is None:
                    t = self._merge_into(blobs)[name]
        return t, t.numel() * t.element_size()

    def _merge_into(self, blobs) -> dict[str, torch.Tensor]:
        """Merge the adapter with peft and store every touched tensor whose key is known."""
        from mergefile.io.header import parse_dtype

        try:
            from peft import PeftModel
        except ImportError as e:  # pragma: no cover - a declared dependency
            raise UserError("peft is needed to apply a LoRA adapter (pip install peft)") from e
        from transformers import AutoModelForCausalLM

        dtype = parse_dtype(self.base.tensors[next(iter(sorted(self.touched)))].dtype)
        from mergefile.targets._hf import quiet_transformers

        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(self.base.path, dtype=dtype)
            merged = PeftModel.from_pretrained(model, self.adapter_dir).merge_and_unload()
        state = merged.state_dict()
        missing = sorted(n for n in self.touched if n not in state)
        if missing:
            raise ConfigError(f"applying adapter '{self.adapter_dir}': the merged model has no tensor {missing[0]!r}")
        out = {}
        for n in sorted(self.touched):
            t = state[n].detach().to("cpu").contiguous().clone()
            out[n] = t
            if n in self.keys:
                blobs.put(self.keys[n], t)
        return out


def _plain(model: InputModel, name: str, key: str, blobs, reader) -> tuple[torch.Tensor, int]:
    """Read an untouched tensor of the base as the loader would (file, or upstream output)."""
    if model.source is not None:
        return model.source.load(name, key, blobs, reader)
    if model.target is None:
        info = model.tensors[name]
        return reader.get(info), info.nbytes
    t = blobs.get(key)
    if t is not None:
        return t, t.numel() * t.element_size()
    from mergefile.io.model_dir import ModelDir

    info = ModelDir.open(model.path).tensors[name]
    return reader.get(info), info.nbytes


register_on_load("lora", apply_lora)
