"""Tokenizer merging at plan time: output vocabulary, permutation tables, fill rules, keys.

Vocabularies are in tests/vocab_models.py; every expectation here is written out by hand from
them. Planning reads tokenizer files and headers only, never tensor data.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mergefile.errors import ConfigError
from mergefile.plan.graph import build_graph
from mergefile.plan.planner import Planner
from mergefile.plan.vocab import NORMAL_ADDED
from mergefile.syntax import parse_text
from tests.vocab_models import SPECIAL, VOCABS, W, make_vocab_models

UNION = SPECIAL + W + ["x00", "x01", "x02", "x03", "<|im_start|>"]  # base, then b's new words, then b's added token


@pytest.fixture(scope="module")
def vm(tmp_path_factory) -> dict[str, Path]:
    return make_vocab_models(tmp_path_factory.mktemp("vocab_models"))


@pytest.fixture(autouse=True)
def no_tensor_reads(monkeypatch):
    from mergefile.io import reader

    monkeypatch.setattr(reader.TensorReader, "get", lambda *a, **k: pytest.fail("planning read tensor data"))


def plan(tmp_path: Path, models: dict, body: str, target: str = "out/x"):
    decls = "\n".join(f'model {n} = "{p}"' for n, p in models.items())
    mf = parse_text(decls + "\n" + body, str(tmp_path / "Mergefile"))
    build_graph(mf)
    return Planner(mf).plan(target)


def job(p, name):
    return next(j for j in p.jobs if j.name == name)


def test_union_vocabulary_and_tables(vm, tmp_path):
    p = plan(tmp_path, vm, "out/x: linear { base weight=1 ; b weight=1 ; tokenizer = union }")
    v = p.vocab
    assert v.tokens == tuple(UNION) and v.size == 69
    assert set(v.remaps) == {"model.embed_tokens.weight", "lm_head.weight"}
    r = v.remaps["model.embed_tokens.weight"]
    base, b = list(r.tables[0]), list(r.tables[1])
    # w00 (new id 4): base row 4, b lacks it; w59 (63): base 63, b 4; x00 (64): b 60; <|im_start|> (68): b 64
    assert (base[4], b[4]) == (4, -1)
    assert (base[63], b[63]) == (63, 4)
    assert (base[64], b[64]) == (-1, 60)
    assert (base[68], b[68]) == (-1, 64)
    assert b[:4] == [0, 1, 2, 3] and r.base == 0 and r.real == r.size == 69
    j = job(p, "model.embed_tokens.weight")
    assert j.vocab == r.digest and j.result_shape == (69, 32)
    assert job(p, "model.layers.0.mlp.up_proj.weight").vocab is None
    assert p.config["vocab_size"] == 69
    spec = v.tokenizer
    assert [dict(f)["content"] for f in spec.add] == ["x00", "x01", "x02", "x03", "<|im_start|>"]
    assert dict(spec.add[0]) == dict(NORMAL_ADDED, content="x00") and dict(spec.add[-1])["special"] is True
    assert spec.strip_to is None and spec.expect == tuple(UNION)


def test_base_and_model_sources(vm, tmp_path):
    p = plan(tmp_path, vm, "out/x: linear { base weight=1 ; b weight=1 ; tokenizer_source = base }")
    assert p.vocab.tokens == tuple(SPECIAL + W) and p.vocab.size == 64 and p.vocab.tokenizer is None
    assert p.donor.label == "base"
    p = plan(tmp_path, vm, "out/x: linear { base weight=1 ; b weight=1 ; tokenizer = b }")
    assert p.vocab.tokens == tuple(VOCABS["b"][0] + ["<|im_start|>"]) and p.vocab.size == 65
    r = p.vocab.remaps["lm_head.weight"]
    assert list(r.tables[1]) == list(range(65))  # b's own order
    assert r.tables[0][60] == -1 and r.tables[0][4] == 63  # x00 not in base; b's id 4 is w59
    assert p.vocab.tokenizer is None and p.donor.label == "b"  # b's files are copied as they are


def test_padding_rows(vm, tmp_path):
    p = plan(tmp_path, vm, "out/x: linear { base weight=1 ; b weight=1 ; tokenizer = union ; pad_to_multiple_of = 32 }")
    r = p.vocab.remaps["lm_head.weight"]
    assert (r.real, r.size) == (69, 96) and p.config["vocab_size"] == 96
    assert job(p, "lm_head.weight").result_shape == (96, 32)


def test_strip_to_vocab_size_and_identity_needs_no_remap(vm, tmp_path):
    p = plan(tmp_path, vm, "out/x: linear { c weight=1 ; base weight=1 ; tokenizer = base }")
    assert p.vocab.tokens == tuple(SPECIAL + W)  # y00..y05 have ids >= vocab_size 64
    assert p.vocab.tokenizer.strip_to == 64 and p.vocab.tokenizer.add == ()
    assert p.vocab.remaps == {}  # both models already agree on every row: keys as without a tokenizer
    plain = plan(tmp_path, vm, "out/x: linear { c weight=1 ; base weight=1 }")
    assert [j for j in p.jobs] == [j for j in plain.jobs]


def test_token_rules(vm, tmp_path):
    body = """
out/x: linear {
    base weight=1
    b weight=1
    token["x00"] = zero
    token["w10"] = b
    token_force["w10"] = true
    token["<|im_start|>"] = [base, "<s>"]
    token["w01"] = [b, 7]
    token["w05"] = zero
    token["<think>"] = auto
}"""
    p = plan(tmp_path, vm, body)
    assert p.vocab.tokens == tuple(UNION + ["<think>"])  # a tokens-only recipe means union
    r = p.vocab.remaps["model.embed_tokens.weight"]
    assert sorted(r.fills) == sorted(
        [(64, "zero", -1, -1), (14, "row", 1, VOCABS["b"][0].index("w10")), (68, "row", 0, 1), (5, "row", 1, 7)]
    )  # w05: both have it, the rule is unused
    assert r.force == (14,)
    assert any("<think>" in w and "zeros" in w for w in p.warnings)


def test_weight_edits_keep_the_remap_and_recipe_edits_touch_only_embeddings(vm, tmp_path):
    one = plan(tmp_path, vm, "out/x: linear { base weight=1 ; b weight=1 ; tokenizer = union }")
    two = plan(tmp_path, vm, "out/x: linear { base weight=1 ; b weight=2 ; tokenizer = union }")
    assert one.vocab.remaps["lm_head.weight"].digest == two.vocab.remaps["lm_head.weight"].digest
    three = plan(tmp_path, vm, 'out/x: linear { base weight=1 ; b weight=1 ; tokenizer = union ; token["<t>"] = auto }')
    changed = sorted(a.name for a, c in zip(one.jobs, three.jobs) if a != c)
    assert changed == ["lm_head.weight", "model.embed_tokens.weight"]


def test_upstream_target_vocabulary(vm, tmp_path):
    body = """
out/u: linear { base weight=1 ; b weight=1 ; tokenizer = union }
out/v: linear { out/u weight=1 ; b weight=1 ; tokenizer = base }
"""
    p = plan(tmp_path, vm, body, "out/v")
    assert p.vocab.tokens == tuple(UNION)  # out/u's planned vocabulary, before it is built
    r = p.vocab.remaps["model.embed_tokens.weight"]
    assert list(r.tables[0]) == list(range(69)) and r.tables[1][64] == 60


@pytest.mark.parametrize(
    "lines, needle",
    [
        ('token["x00"] = c', "which is not an input of"),
        ('token["w00"] = b', "'w00' is not in the vocabulary of model 'b'"),
        ("token = b", "needs the token in brackets"),
        ('token_force["x00"] = 1', "must be true or false"),
        ("pad_to_multiple_of = 0", "positive integer"),
        ("chat_template = chatmlx", "did you mean 'chatml'"),
        ('token["x00"] = [b, "nope"]', "'nope' (the row for 'x00') is not in the vocabulary of model 'b'"),
        ("tokenizer = union ; tokenizer_source = base", "same setting"),
    ],
)
def test_recipe_errors(vm, tmp_path, lines, needle):
    with pytest.raises(ConfigError) as e:
        plan(tmp_path, vm, f"out/x: linear {{ base weight=1 ; b weight=1 ; {lines} }}")
    assert needle in str(e.value)
