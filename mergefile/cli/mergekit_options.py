"""mergekit's merge options (``mergekit-yaml --help``), as the drop-in verbs read them.

One table, one row per option: its mergekit name, the argument it takes, and what mergebuild
does with it: ``map`` (set a mergebuild option), or ``note`` (accepted; a one-line note says why
it changes nothing here). No option of mergekit is a usage error. docs/mergekit.md shows the
same table, and tests/cli/test_mergekit_verbs.py tries every row.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

# mergekit's defaults (MergeOptions): out_shard_size is 5B, decimal.
DEFAULT_SHARD_SIZE = 5 * 10**9


@dataclass(frozen=True)
class Option:
    """One mergekit option. ``kind``: bool (with --no-), int, str, size, count, flag."""

    name: str
    kind: str
    note: str | None = None  # why it changes nothing (printed when the option is given)
    default: object = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option("allow_crimes", "bool"),
    Option(
        "unsafe_truncate_embeddings",
        "bool",
        "vocabularies are aligned by the tokenizer settings (tokenizer_source), never truncated",
    ),
    Option("transformers_cache", "str"),
    Option("lora_merge_cache", "str", "a LoRA applied to a model is cached as tensors in the mergebuild cache"),
    Option("lora_merge_dtype", "str", "a LoRA is applied in the dtype of the model it is applied to"),
    Option("cuda", "bool"),
    Option("device", "str"),
    Option("low_cpu_memory", "bool", "tensors are streamed under --memory-budget; results stay on the CPU side"),
    Option("out_shard_size", "size", default=DEFAULT_SHARD_SIZE),
    Option("copy_tokenizer", "bool", default=True),
    Option("clone_tensors", "bool", "every output tensor is written from its own buffer"),
    Option("trust_remote_code", "bool", "mergebuild reads weights and config.json only; no model code is run"),
    Option("random_seed", "int"),
    Option("lazy_unpickle", "bool", "inputs are always read lazily (safetensors by mmap; .bin with --allow-pickle)"),
    Option("write_model_card", "bool", default=True),
    Option("safe_serialization", "bool", "outputs are always safetensors", default=True),
    Option("verbosity", "count"),
    Option("quiet", "bool"),
    Option("read_to_gpu", "bool"),
    Option("multi_gpu", "bool", "one build uses one device; --executor ray spreads tensors over workers"),
    Option("num_threads", "int"),
    Option("gpu_rich", "flag"),
    Option("async_write", "bool", "shards are always written by a background thread as they complete"),
    Option("write_threads", "int", "shards are written by one background thread, overlapping the merge"),
)


def add_mergekit_options(p: argparse.ArgumentParser) -> None:
    """Every mergekit merge option (spellings a verb already defines are left to it)."""
    from mergefile.cli.main import shard_size

    g = p.add_argument_group("mergekit options (honoured, mapped, or noted; see docs/mergekit.md)")
    taken = set(p._option_string_actions)  # argparse has no public view of its flags
    for o in OPTIONS:
        flags = {"verbosity": ["-v", "--verbose"], "num_threads": ["-j", "--num-threads"]}.get(o.name, [o.flag])
        flags = [f for f in flags if f not in taken]
        if not flags:
            continue
        kw: dict = {"dest": f"mk_{o.name}", "default": None}
        if o.kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif o.kind in ("int", "str", "size"):
            kw["type"] = {"int": int, "str": str, "size": shard_size}[o.kind]
        elif o.kind == "count":
            kw["action"] = "count"
        else:
            kw["action"] = "store_true"
        g.add_argument(*flags, help=f"mergekit's {o.flag}" + (f" (changes nothing: {o.note})" if o.note else ""), **kw)


def given(args: argparse.Namespace) -> dict[str, object]:
    """The mergekit options on the command line (name -> value); gpu_rich expanded as mergekit does."""
    out = {o.name: getattr(args, f"mk_{o.name}", None) for o in OPTIONS}
    out = {k: v for k, v in out.items() if v is not None}
    if out.pop("gpu_rich", None):
        for k in ("cuda", "low_cpu_memory", "read_to_gpu", "multi_gpu"):
            out.setdefault(k, True)
    return out


def notes(values: dict[str, object]) -> list[str]:
    """One line per given option that changes nothing, saying why (not for mergekit's defaults)."""
    lines = []
    for o in OPTIONS:
        v = values.get(o.name)
        default = o.default if o.default is not None else (False if o.kind == "bool" else None)
        if o.note is None or v is None or v == default:
            continue
        shown = o.flag if v is True else (f"--no-{o.flag[2:]}" if v is False else f"{o.flag} {v}")
        lines.append(f"note: {shown} changes nothing: {o.note}")
    return lines


def build_settings(values: dict[str, object]) -> dict[str, object]:
    """The mergebuild build options the mapped ones set (attributes of the build's namespace).

    ``--cuda`` / ``--device`` give a device name here; whether it exists is checked when
    something must be computed (``resolve_device``), so a no-op never imports torch.
    """
    out: dict[str, object] = {
        "out_shard_size": values.get("out_shard_size", DEFAULT_SHARD_SIZE),
        "copy_tokenizer": values.get("copy_tokenizer", True) is not False,
        "write_card": values.get("write_model_card", True) is not False,
    }
    if values.get("allow_crimes"):
        out["allow_crimes"] = True
    device = values.get("device") or ("cuda" if values.get("cuda") else None)
    if device:
        out["device"] = device
    if values.get("read_to_gpu"):
        out["read_to_device"] = True
    if values.get("num_threads"):
        out["jobs"] = int(values["num_threads"])  # type: ignore[arg-type]
    if values.get("random_seed") is not None:
        out["target_settings"] = {"seed": int(values["random_seed"])}  # type: ignore[arg-type]
    if values.get("quiet"):
        out["quiet"] = True
    if values.get("verbosity"):
        out["verbose"] = True
    if values.get("transformers_cache"):
        out["hub_cache"] = str(values["transformers_cache"])
    return out


def resolve_device(device: str) -> tuple[str, str | None]:
    """mergekit's ``cuda`` / ``auto`` on this machine: (device, a note when it falls back).

    Without a CUDA device, ``--cuda`` builds on the CPU with a note (the results are the same
    numbers; a notebook written for a GPU still runs), where mergekit would stop.
    """
    if device not in ("auto", "cuda") and not device.startswith("cuda:"):
        return device, None
    import torch

    if torch.cuda.is_available():
        return ("cuda" if device == "auto" else device), None
    if device == "auto":
        return "cpu", None
    return "cpu", f"note: --cuda / --device {device}: no CUDA device here, computing on the CPU"


def set_hub_cache(path: str) -> None:
    """``--transformers-cache DIR``: where hub models are found and downloaded (HF_HUB_CACHE)."""
    os.environ["HF_HUB_CACHE"] = os.path.abspath(path)
