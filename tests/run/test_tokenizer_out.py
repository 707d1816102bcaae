"""Writing merged tokenizer files: stripping per model type, added tokens, config and template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mergefile.errors import UserError
from mergefile.plan.vocab import NORMAL_ADDED, TokenizerSpec
from mergefile.run.tokenizer_out import strip_tokenizer_json, write_tokenizer


def _bpe() -> dict:
    vocab = {"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4, "bc": 5}
    return {
        "model": {"type": "BPE", "vocab": vocab, "merges": ["a b", ["ab", "c"], "b c"]},
        "added_tokens": [{"id": 6, "content": "<x>"}, {"id": 2, "content": "c"}],
    }


def test_strip_bpe_drops_tokens_and_their_merges():
    data = _bpe()
    strip_tokenizer_json(data, 4)
    assert data["model"]["vocab"] == {"a": 0, "b": 1, "c": 2, "ab": 3}
    assert data["model"]["merges"] == ["a b"]  # "ab c" makes abc (gone); "b c" makes bc (gone)
    assert [a["id"] for a in data["added_tokens"]] == [2]


def test_strip_unigram_and_unsupported():
    data = {"model": {"type": "Unigram", "vocab": [["a", 0.0], ["b", -1.0], ["c", -2.0]], "unk_id": 0}}
    strip_tokenizer_json(data, 2)
    assert data["model"]["vocab"] == [["a", 0.0], ["b", -1.0]]
    with pytest.raises(UserError, match="cannot strip a Mystery tokenizer"):
        strip_tokenizer_json({"model": {"type": "Mystery"}}, 2)


def _source(tmp_path: Path) -> Path:
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    words = ["<unk>", "<s>", "a", "b", "c", "d"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken("<unk>", special=True), AddedToken("<s>", special=True)])
    src = tmp_path / "src"
    src.mkdir()
    tok.save(str(src / "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "<unk>",
        "bos_token": "<s>",
        "chat_template": "old",
        "added_tokens_decoder": {"0": {"content": "<unk>", "special": True}},
    }
    (src / "tokenizer_config.json").write_text(json.dumps(cfg))
    (src / "vocab.txt").write_text("stale slow-tokenizer file\n")
    return src


def test_write_strips_adds_and_updates_the_config(tmp_path):
    src, out = _source(tmp_path), tmp_path / "out"
    out.mkdir()
    add = (tuple((k, "<new>" if k == "content" else v) for k, v in NORMAL_ADDED),)
    spec = TokenizerSpec(str(src), 5, add, "{{ 'hi' }}", ("<unk>", "<s>", "a", "b", "c", "<new>"), "k")
    assert write_tokenizer(spec, out) == ["tokenizer.json", "tokenizer_config.json"]
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == "{{ 'hi' }}"  # the source keeps its template in the config
    assert (
        sorted(cfg["added_tokens_decoder"]) == ["0", "1", "5"]
        and cfg["added_tokens_decoder"]["5"]["content"] == "<new>"
    )
    assert not (out / "vocab.txt").exists() and not (out / "chat_template.jinja").exists()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert tok("a <new> d").input_ids == [2, 5, 0]


def test_write_refuses_a_vocabulary_it_did_not_plan(tmp_path):
    src, out = _source(tmp_path), tmp_path / "out"
    out.mkdir()
    spec = TokenizerSpec(str(src), 5, (), None, ("<unk>", "<s>", "a", "b"), "k")
    with pytest.raises(UserError, match="does not match the planned vocabulary"):
        write_tokenizer(spec, out)


def test_template_only_copies_the_vocabulary(tmp_path):
    src, out = _source(tmp_path), tmp_path / "out"
    out.mkdir()
    (src / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    spec = TokenizerSpec(str(src), None, (), "{{ 'x' }}", (), "k")
    assert write_tokenizer(spec, out) == ["chat_template.jinja", "tokenizer.json", "tokenizer_config.json", "vocab.txt"]
    assert (out / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    assert (out / "chat_template.jinja").read_text() == "{{ 'x' }}"
