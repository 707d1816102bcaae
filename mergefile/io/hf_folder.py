"""The non-tensor files of a Hugging Face model folder: config, tokenizer, generation config.

Outputs must be byte-identical when rebuilt from the same inputs (so a no-op build changes
nothing and CI can diff), hence sorted-key JSON exactly as transformers writes it, and atomic
writes so a crash never leaves a half-written config beside finished weights.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

from mergefile._lazy import torch
from mergefile.errors import UserError
from mergefile.io.header import dtype_name
from mergefile.io.writer import _atomic_write_bytes

__all__ = ["TOKENIZER_FILES", "copy_aux_files", "write_config"]

TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tiktoken.model",
    "chat_template.jinja",
    "chat_template.json",
)
# Folder of named chat templates (transformers >= 4.54 writes one per template).
TOKENIZER_DIRS: tuple[str, ...] = ("additional_chat_templates",)
GENERATION_CONFIG = "generation_config.json"


def config_json(config: dict) -> str:
    """JSON text as ``PretrainedConfig.to_json_file`` writes it: indent 2, sorted keys, newline."""
    return json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _set_dotted(config: dict, key: str, value: object) -> None:
    """Set ``a.b.c`` in nested dicts; every parent must already exist (a wrong key is a bug)."""
    *parents, leaf = key.split(".")
    node = config
    for i, part in enumerate(parents):
        child = node.get(part)
        if not isinstance(child, dict):
            where = ".".join(parents[: i + 1])
            raise KeyError(f"config has no sub-config '{where}' (setting '{key}')")
        node = child
    node[leaf] = value


def write_config(
    config: dict,
    out_dir: str | Path,
    *,
    layer_key: str | None = None,
    num_layers: int | None = None,
    dtype: torch.dtype | None = None,
    vocab_size: int | None = None,
) -> None:
    """Write ``out_dir/config.json`` from a copy of ``config`` with the merge's changes.

    Args:
        config: the donor config (not modified).
        out_dir: the output folder (created if needed).
        layer_key: dotted key of the layer count, e.g. ``"num_hidden_layers"`` or
            ``"text_config.num_hidden_layers"``; set to ``num_layers``.
        num_layers: the new layer count (with ``layer_key``).
        dtype: output dtype; written to whichever of ``"dtype"`` (transformers 5) and
            ``"torch_dtype"`` (4.x) the config has, or ``"dtype"`` when it has neither.
        vocab_size: new vocabulary size; written where the config has ``vocab_size`` (top level
            and/or ``text_config``), or at the top level when it has none.
    """
    cfg = copy.deepcopy(config)
    if layer_key is not None and num_layers is not None:
        _set_dotted(cfg, layer_key, int(num_layers))
    if dtype is not None:
        keys = [k for k in ("dtype", "torch_dtype") if k in cfg] or ["dtype"]
        for k in keys:
            cfg[k] = dtype_name(dtype)
    if vocab_size is not None:
        holders = [cfg] if "vocab_size" in cfg else []
        text = cfg.get("text_config")
        if isinstance(text, dict) and "vocab_size" in text:
            holders.append(text)
        for holder in holders or [cfg]:
            holder["vocab_size"] = int(vocab_size)
    os.makedirs(out_dir, exist_ok=True)
    _atomic_write_bytes(Path(out_dir) / "config.json", config_json(cfg).encode("utf-8"))


def _copy_file(src: str, dst: str) -> None:
    tmp = dst + ".tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def copy_aux_files(src_dir: str | Path, out_dir: str | Path, *, tokenizer: bool = True) -> list[str]:
    """Copy the tokenizer files and ``generation_config.json`` that exist in ``src_dir``.

    Args:
        src_dir: the donor model folder.
        out_dir: the output folder (created if needed).
        tokenizer: copy tokenizer files (False when the merge builds its own tokenizer).

    Returns:
        Names copied, in :data:`TOKENIZER_FILES` order then ``generation_config.json``.

    Raises:
        UserError: ``src_dir`` is not a folder.
    """
    src = os.fspath(src_dir)
    if not os.path.isdir(src):
        raise UserError(f"cannot copy tokenizer files: model folder '{src}' does not exist")
    os.makedirs(out_dir, exist_ok=True)
    names = [*TOKENIZER_FILES, *TOKENIZER_DIRS] if tokenizer else []
    copied: list[str] = []
    for name in [*names, GENERATION_CONFIG]:
        s, d = os.path.join(src, name), os.path.join(out_dir, name)
        if os.path.isfile(s):
            _copy_file(s, d)
        elif os.path.isdir(s):
            shutil.rmtree(d, ignore_errors=True)
            shutil.copytree(s, d)
        else:
            continue
        copied.append(name)
    return copied
