"""Tokenizer merges end to end: embedding rows, the written tokenizer, chat templates, rebuilds.

Vocabularies are in tests/vocab_models.py. Rows are checked token by token against the rule
that should fill them (reference §6), computed by hand from the input matrices.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mergefile.plan.chat_templates import CHAT_TEMPLATES
from tests.helpers import cli, cli_json, mergefile_for, read_tensors
from tests.vocab_models import SPECIAL, W, ids, make_vocab_models

EMB, HEAD = "model.embed_tokens.weight", "lm_head.weight"
UNION = SPECIAL + W + ["x00", "x01", "x02", "x03", "<|im_start|>"]


@pytest.fixture(scope="module")
def vm(tmp_path_factory) -> dict[str, Path]:
    return make_vocab_models(tmp_path_factory.mktemp("vocab_models"))


@pytest.fixture(scope="module")
def w(vm) -> dict[str, dict[str, torch.Tensor]]:
    return {name: read_tensors(path) for name, path in vm.items()}


def build(tmp_path: Path, vm: dict, body: str, *args: str) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    mergefile_for(tmp_path, vm, body)
    assert cli(tmp_path, *args, cache=tmp_path / "cache") == 0
    return tmp_path / "out/x"


def row(w, model: str, tensor: str, token: str) -> torch.Tensor:
    return w[model][tensor][ids(model)[token]]


def test_union_rows_tokenizer_and_padding(vm, w, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = build(
        tmp_path, vm, "out/x: linear { base weight=1 ; b weight=1 ; tokenizer = union ; pad_to_multiple_of = 8 }"
    )
    t = read_tensors(out)
    for name in (EMB, HEAD):
        m = t[name]
        assert m.shape == (72, 32)
        both = (row(w, "base", name, "w10") + row(w, "b", name, "w10")) / 2
        torch.testing.assert_close(m[14], both)  # both have it: mean of own rows
        torch.testing.assert_close(m[4], row(w, "base", name, "w00"))  # b lacks w00: the base's row
        torch.testing.assert_close(m[64], row(w, "b", name, "x00"))  # only b has x00: b's row
        torch.testing.assert_close(m[68], row(w, "b", name, "<|im_start|>"))
        pad = []
        for model in ("base", "b"):  # each model's padding = mean of its re-indexed real rows
            own = torch.stack([row(w, model, name, tok) for tok in UNION if tok in ids(model)])
            other = "b" if model == "base" else "base"
            fill = torch.stack([row(w, other, name, tok) for tok in UNION if tok not in ids(model)])
            pad.append(torch.cat([own, fill]).mean(0))
        torch.testing.assert_close(m[69], (pad[0] + pad[1]) / 2)
        torch.testing.assert_close(m[71], m[69])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vocab_size"] == 72
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 69
    enc = tok("w01 x02 <|im_start|> w59").input_ids
    assert enc == [5, 66, 68, 63]
    assert tok.decode(enc) == "w01 x02 <|im_start|> w59"
    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        assert model(torch.tensor([enc])).logits.shape == (1, 4, 72)


def test_base_source_drops_other_tokens(vm, w, tmp_path):
    out = build(tmp_path, vm, "out/x: linear { base weight=1 ; b weight=3 ; tokenizer = base }")
    m = read_tensors(out)[EMB]
    assert m.shape == (64, 32)
    torch.testing.assert_close(m[14], (row(w, "base", EMB, "w10") + 3 * row(w, "b", EMB, "w10")) / 4)
    torch.testing.assert_close(m[4], row(w, "base", EMB, "w00"))
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 64


def test_model_source_uses_its_vocabulary(vm, w, tmp_path):
    from transformers import AutoTokenizer

    out = build(tmp_path, vm, "out/x: linear { base weight=1 ; b weight=1 ; tokenizer = b }")
    m = read_tensors(out)[HEAD]
    assert m.shape == (65, 32)
    torch.testing.assert_close(m[60], row(w, "b", HEAD, "x00"))  # base lacks x00
    torch.testing.assert_close(m[4], (row(w, "base", HEAD, "w59") + row(w, "b", HEAD, "w59")) / 2)
    assert (out / "tokenizer.json").read_bytes() == (vm["b"] / "tokenizer.json").read_bytes()
    assert len(AutoTokenizer.from_pretrained(out)) == 65


def test_forced_zero_and_model_token_rows(vm, w, tmp_path):
    body = """
out/x: linear {
    base weight=1
    b weight=1
    tokenizer = union
    token["w10"] = b
    token_force["w10"] = true
    token["x00"] = zero
    token["<|im_start|>"] = [base, "<s>"]
    token["<think>"] = auto
}"""
    out = build(tmp_path, vm, body)
    m = read_tensors(out)[EMB]
    torch.testing.assert_close(m[14], row(w, "b", EMB, "w10"))  # forced: both use b's row
    torch.testing.assert_close(m[64], row(w, "b", EMB, "x00") / 2)  # base gets zeros, b keeps its own
    torch.testing.assert_close(m[68], (row(w, "base", EMB, "<s>") + row(w, "b", EMB, "<|im_start|>")) / 2)
    assert torch.count_nonzero(m[69]) == 0  # <think>: no model has it
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert tok.convert_tokens_to_ids(["<think>", "<|im_start|>"]) == [69, 68]
    assert tok.decode(tok("w03 <think>").input_ids) == "w03 <think>"


def test_stripped_base_tokenizer(vm, tmp_path):
    from transformers import AutoTokenizer

    out = build(tmp_path, vm, "out/x: linear { c weight=1 ; b weight=1 ; tokenizer = base }")
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 64 and tok.convert_tokens_to_ids("y00") == tok.unk_token_id
    assert read_tensors(out)[EMB].shape == (64, 32)


@pytest.mark.parametrize(
    "value, expect",
    [
        ("chatml", CHAT_TEMPLATES["chatml"]),
        ("llama3", CHAT_TEMPLATES["llama3"]),
        ("\"{{ messages[0]['content'] }}!\"", "{{ messages[0]['content'] }}!"),
    ],
)
def test_chat_template(vm, tmp_path, value, expect):
    from transformers import AutoTokenizer

    out = build(tmp_path, vm, f"out/x: linear {{ base weight=1 ; b weight=1 ; chat_template = {value} }}")
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == expect
    text = tok.apply_chat_template([{"role": "user", "content": "w01"}], tokenize=False)
    assert "w01" in text
    assert (out / "tokenizer.json").read_bytes() == (vm["base"] / "tokenizer.json").read_bytes()  # vocabulary untouched


def _computed(r: dict) -> list[str]:
    t = r["targets"][0]
    return sorted(s["tensor"] for s in t["stale"]) if t["stale"] else []


def test_rebuilds_touch_only_what_changed(vm, tmp_path, capsys, monkeypatch):
    base = "out/x: linear {\n base weight=1\n b weight=1\n tokenizer = union\n}"
    mf = mergefile_for(tmp_path, vm, base)
    cache = tmp_path / "cache"
    assert cli(tmp_path, cache=cache) == 0
    first = (tmp_path / "out/x/tokenizer.json").read_bytes()
    # a weight on one layer: that layer recomputes, the embeddings (and their permutation) do not
    mf.write_text(mf.read_text().replace(" b weight=1\n", ' b weight=1 weight["layers.1."]=2\n'))
    r = cli_json(tmp_path, cache=cache, capsys=capsys)
    assert r["targets"][0]["computed"] == 9 and all(".layers.1." in n for n in _computed(r))
    # a new token: only the two vocabulary-indexed tensors recompute
    mf.write_text(mf.read_text().replace(" tokenizer = union\n", ' tokenizer = union\n token["<t>"] = auto\n'))
    r = cli_json(tmp_path, cache=cache, capsys=capsys)
    assert _computed(r) == [HEAD, EMB] and r["targets"][0]["computed"] == 2
    # a chat template: no tensor recomputes, the tokenizer files are rewritten
    mf.write_text(mf.read_text().replace(" tokenizer = union\n", " tokenizer = union\n chat_template = alpaca\n"))
    r = cli_json(tmp_path, cache=cache, capsys=capsys)
    assert r["targets"][0]["built"] and r["targets"][0]["computed"] == 0
    assert (tmp_path / "out/x/chat_template.jinja").read_text() == CHAT_TEMPLATES["alpaca"]
    # no-op: nothing is built, the tokenizer is not rebuilt
    from mergefile.run import tokenizer_out

    monkeypatch.setattr(tokenizer_out, "write_tokenizer", lambda *a, **k: pytest.fail("no-op rebuilt the tokenizer"))
    r = cli_json(tmp_path, cache=cache, capsys=capsys)
    assert r["targets"][0]["up_to_date"]
    monkeypatch.undo()
    # back to the first recipe: identical bytes, served from the cache
    mf.write_text(mergefile_for(tmp_path, vm, base).read_text())
    r = cli_json(tmp_path, cache=cache, capsys=capsys)
    assert r["targets"][0]["computed"] == 0
    assert (tmp_path / "out/x/tokenizer.json").read_bytes() == first


def test_tokenizer_files_are_deterministic(vm, tmp_path):
    body = 'out/x: linear { base weight=1 ; b weight=1 ; tokenizer = union ; token["<t>"] = auto ; chat_template = chatml }'
    a = build(tmp_path / "one", vm, body)
    b = build(tmp_path / "two", vm, body)
    names = sorted(p.name for p in a.iterdir() if p.name.startswith(("tokenizer", "chat_template", "special")))
    assert names == sorted(p.name for p in b.iterdir() if p.name.startswith(("tokenizer", "chat_template", "special")))
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n


def test_tokenizer_from_another_target(vm, tmp_path, capsys):
    body = """
out/u: linear { base weight=1 ; b weight=1 ; tokenizer = union ; token["<t>"] = auto }
out/x: linear { base weight=1 ; b weight=1 ; tokenizer = out/u }
"""
    out = build(tmp_path, vm, body, "out/x")  # out/u is built first: out/x reads its tokenizer
    assert read_tensors(out)[EMB].shape == (70, 32)
    assert (out / "tokenizer.json").read_bytes() == (tmp_path / "out/u/tokenizer.json").read_bytes()
    assert cli_json(tmp_path, "out/x", cache=tmp_path / "cache", capsys=capsys)["up_to_date"]


def test_frankenmerge_with_union(vm, w, tmp_path):
    from transformers import AutoModelForCausalLM

    out = build(tmp_path, vm, "out/x: passthrough {\n slice base[0:1]\n slice b[1:2]\n tokenizer = union\n}")
    t = read_tensors(out)
    # embeddings come from base (first slice), the head from b (last): rows only from those inputs
    torch.testing.assert_close(t[EMB][14], row(w, "base", EMB, "w10"))
    assert torch.count_nonzero(t[EMB][64]) == 0  # x00: base (the only input) lacks it
    torch.testing.assert_close(t[HEAD][64], row(w, "b", HEAD, "x00"))
    assert t[EMB].shape == t[HEAD].shape == (69, 32)
    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        assert model(torch.tensor([[5, 64, 68]])).logits.shape == (1, 3, 69)


def test_noop_with_a_merged_tokenizer_imports_no_tensor_or_tokenizer_library(vm, tmp_path):
    import subprocess
    import sys

    from tests.helpers import REPO, age_files

    age_files(*vm.values())  # freshly written inputs are "racy" and would be re-hashed once
    build(tmp_path, vm, "out/x: linear { base weight=1 ; b weight=1 ; tokenizer = union ; chat_template = chatml }")
    code = (
        "import sys\n"
        "from mergefile.cli.main import main\n"
        f"assert main(['-C', {str(tmp_path)!r}, '--quiet', '-q', '--cache-dir', {str(tmp_path / 'cache')!r}]) == 0\n"
        "for m in ('torch', 'transformers', 'tokenizers'):\n"
        "    assert m not in sys.modules, m + ' imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
