"""Tiny Llamas with hand-made word-level tokenizers, for tokenizer-merging tests.

Vocabularies (WordLevel, whitespace split; ids in list order):
  base: <unk> <s> </s> <pad> w00..w59                          64 tokens, vocab_size 64
  b:    <unk> <s> </s> <pad> w59..w04 (reversed) x00..x03       64 tokens, + special <|im_start|> = 64,
        vocab_size 66 (row 65 unused)
  c:    as base, then y00..y05 (ids 64..69) but vocab_size 64  (ids >= 64 must be stripped)
"""

from __future__ import annotations

import json
from pathlib import Path

from mergefile.demo import make_llama

SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]
W = [f"w{i:02d}" for i in range(60)]
VOCABS: dict[str, tuple[list[str], list[str], int]] = {  # name -> (tokens, added special tokens, vocab_size)
    "base": (SPECIAL + W, [], 64),
    "b": (SPECIAL + W[4:][::-1] + ["x00", "x01", "x02", "x03"], ["<|im_start|>"], 66),
    "c": (SPECIAL + W + [f"y{i:02d}" for i in range(6)], [], 64),
}


def write_tokenizer(out: Path, tokens: list[str], added: list[str]) -> None:
    """A WordLevel tokenizer folder (tokenizer.json + tokenizer_config.json) with these ids."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL + added])
    for f in out.glob("*"):
        if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "chat_template.jinja"):
            f.unlink()
    tok.save(str(out / "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "model_max_length": 256,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))


def make_vocab_models(root: Path) -> dict[str, Path]:
    """Folders "base", "b", "c" as in the module docstring (random weights, hidden 32, 2 layers)."""
    paths = {}
    for seed, (name, (tokens, added, vocab_size)) in enumerate(VOCABS.items()):
        path = make_llama(root / name, seed=10 + seed, layers=2, vocab=vocab_size)
        write_tokenizer(path, tokens, added)
        paths[name] = path
    return paths


def ids(name: str) -> dict[str, int]:
    """token -> id of one of the vocabularies (added tokens included)."""
    tokens, added, _ = VOCABS[name]
    return {t: i for i, t in enumerate(tokens + added)}
