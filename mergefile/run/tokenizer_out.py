"""Write a merged tokenizer into an output folder (publish time, only when the aux key changed).

Works on ``tokenizer.json`` with the ``tokenizers`` library, not through transformers, so the
bytes depend only on the inputs (a rebuild writes identical files) and publishing does not
import transformers. The source's ``tokenizer_config.json`` is kept, with its added-token table
and chat template brought up to date; slow-tokenizer files (``tokenizer.model``, ``vocab.txt``,
...) are dropped when the vocabulary changed, since they would describe the old one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from mergefile.errors import UserError
from mergefile.plan.vocab import TokenizerSpec, added_fields, load_backend

__all__ = ["strip_tokenizer_json", "write_tokenizer"]

_KEEP_ALWAYS = ("special_tokens_map.json",)
_TEMPLATES = ("chat_template.jinja", "chat_template.json")


def _merge_parts(merge: Any) -> list[str]:
    return merge.split(" ") if isinstance(merge, str) else list(merge)


def strip_tokenizer_json(data: dict, limit: int) -> None:
    """Drop tokens with id >= ``limit`` from a parsed tokenizer.json (BPE, WordPiece, WordLevel, Unigram)."""
    model = data["model"]
    kind = model.get("type")
    if kind in ("BPE", "WordPiece", "WordLevel"):
        dropped = {t for t, i in model["vocab"].items() if i >= limit}
        model["vocab"] = {t: i for t, i in model["vocab"].items() if i < limit}
        if kind == "BPE":
            model["merges"] = [
                m for m in model.get("merges", []) if not dropped & {*_merge_parts(m), "".join(_merge_parts(m))}
            ]
    elif kind == "Unigram":
        model["vocab"] = model["vocab"][:limit]
        if model.get("unk_id") is not None and model["unk_id"] >= limit:
            raise UserError(f"cannot strip the tokenizer to {limit} tokens: its unknown token has id {model['unk_id']}")
    else:
        raise UserError(
            f"cannot strip a {kind} tokenizer to the model's vocab_size ({limit}); only BPE, WordPiece, WordLevel and Unigram"
        )
    data["added_tokens"] = [a for a in data.get("added_tokens", []) if a["id"] < limit]


def _build(spec: TokenizerSpec) -> Any:
    from tokenizers import AddedToken, Tokenizer

    backend = load_backend(spec.folder)
    if backend is None:
        raise UserError(f"cannot read the tokenizer in '{spec.folder}'")
    if spec.strip_to is not None:
        data = json.loads(backend.to_str())
        strip_tokenizer_json(data, spec.strip_to)
        backend = Tokenizer.from_str(json.dumps(data))
    for fields in spec.add:
        f = dict(fields)
        tok = AddedToken(
            f["content"],
            single_word=f["single_word"],
            lstrip=f["lstrip"],
            rstrip=f["rstrip"],
            normalized=f["normalized"],
            special=f["special"],
        )
        (backend.add_special_tokens if f["special"] else backend.add_tokens)([tok])
    vocab = backend.get_vocab(with_added_tokens=True)
    got = sorted(vocab, key=vocab.__getitem__)
    if got != list(spec.expect):
        first = next((i for i, (a, b) in enumerate(zip(got, spec.expect)) if a != b), min(len(got), len(spec.expect)))
        raise UserError(
            f"the merged tokenizer does not match the planned vocabulary ({len(got)} tokens, planned {len(spec.expect)}; "
            f"first difference at id {first})",
            hint="a tokenizer whose added tokens overlap its vocabulary? please report it",
        )
    return backend


def _config(spec: TokenizerSpec, backend: Any | None) -> tuple[dict | None, bool]:
    """The output tokenizer_config.json (None if the source has none); True if the template went in it."""
    path = Path(spec.folder) / "tokenizer_config.json"
    if not path.is_file():
        return None, False
    cfg = json.loads(path.read_text(encoding="utf-8"))
    if backend is not None and isinstance(cfg.get("added_tokens_decoder"), dict):
        cfg["added_tokens_decoder"] = {
            str(i): dict(added_fields(a)) for i, a in sorted(backend.get_added_tokens_decoder().items())
        }
    in_config = spec.chat_template is not None and "chat_template" in cfg
    if in_config:
        cfg["chat_template"] = spec.chat_template
    return cfg, in_config


def write_tokenizer(spec: TokenizerSpec, out_dir: Path) -> list[str]:
    """Write the output tokenizer files into ``out_dir``; returns the names written.

    Raises:
        UserError: the source tokenizer cannot be read or stripped, or the result does not
            have the vocabulary that planning computed.
    """
    from mergefile.io.hf_folder import TOKENIZER_FILES

    src, out = Path(spec.folder), Path(out_dir)
    changed = spec.strip_to is not None or bool(spec.add)
    backend = _build(spec) if changed else None
    cfg, template_in_config = _config(spec, backend)
    written = []
    if backend is not None:
        (out / "tokenizer.json").write_text(backend.to_str(pretty=True), encoding="utf-8")
        written.append("tokenizer.json")
        keep = _KEEP_ALWAYS
    else:
        keep = tuple(n for n in TOKENIZER_FILES if n != "tokenizer_config.json" and n not in _TEMPLATES)
    for name in (*keep, *(() if spec.chat_template is not None else _TEMPLATES)):
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)
            written.append(name)
    if cfg is not None:
        (out / "tokenizer_config.json").write_text(
            json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        written.append("tokenizer_config.json")
    if spec.chat_template is not None and not template_in_config:
        (out / "chat_template.jinja").write_text(spec.chat_template, encoding="utf-8")
        written.append("chat_template.jinja")
    return sorted(written)
