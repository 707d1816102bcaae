"""Embedding re-indexing takes any tensor with one row per token: a head's 1-D bias too.

TIES over BERT-style models with ``tokenizer_source: union`` re-indexes ``cls.predictions.bias``
(shape ``[vocab]``); it must get the rows a matrix column gets, not a broadcasting traceback.
"""

from __future__ import annotations

from array import array

import torch

from mergefile.plan.vocab import JobRemap
from mergefile.run.embed_remap import remap_inputs


def _remap(size: int = 6) -> JobRemap:
    # output tokens 0..4 (+1 padding row); model 0 lacks token 3, model 1 lacks token 4
    t0, t1 = array("q", [0, 1, 2, -1, 3]), array("q", [0, 1, 2, 3, -1])
    return JobRemap("d", size, 5, (t0, t1), None, ((2, "zero", 0, 0),), (2,))


def test_a_vector_is_remapped_as_a_one_column_matrix():
    a, b = torch.arange(4.0) + 1, torch.arange(4.0) * 10
    vec = remap_inputs([a, b], _remap())
    mat = remap_inputs([a[:, None], b[:, None]], _remap())
    assert [v.shape for v in vec] == [torch.Size([6])] * 2
    assert all(v.equal(m[:, 0]) for v, m in zip(vec, mat))
    assert vec[0][:5].tolist() == [1.0, 2.0, 0.0, 30.0, 4.0]  # token 3 from the model that has it; 2 forced to zero
    assert vec[0][5].item() == vec[0][:5].mean().item()  # padding: the mean of the real rows


def test_matrices_keep_their_width():
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    out = remap_inputs([a, b], _remap())
    assert [o.shape for o in out] == [torch.Size([6, 3])] * 2
    assert out[0][0].equal(a[0]) and out[1][3].equal(b[3]) and out[1][4].equal(a[3])


def _bert(folder, vocab: int, seed: int):
    from transformers import BertConfig, BertForMaskedLM

    from mergefile.demo import make_tokenizer

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertForMaskedLM(cfg).save_pretrained(folder)
    make_tokenizer(folder, vocab)
    return folder


def test_ties_over_bert_with_a_union_tokenizer(tmp_path, capsys):
    """Only token-indexed tensors are re-indexed: LayerNorm and token types keep their shapes."""
    from safetensors.torch import load_file

    from tests.helpers import cli, read_tensors

    models = tmp_path / "models"
    _bert(models / "base", 120, 0), _bert(models / "a", 120, 1), _bert(models / "b", 128, 2)
    (tmp_path / "m.yml").write_text(
        "merge_method: ties\nbase_model: ./models/base\nmodels:\n"
        "  - {model: ./models/a, parameters: {weight: 0.5, density: 0.5}}\n"
        "  - {model: ./models/b, parameters: {weight: 0.5, density: 0.5}}\n"
        "tokenizer_source: union\ndtype: float32\n"
    )
    assert cli(tmp_path, "--config", "m.yml", "out/x", cache=tmp_path / "cache") == 0
    assert "shapes differ" not in capsys.readouterr().err
    out, b = read_tensors(tmp_path / "out/x"), load_file(models / "b" / "model.safetensors")
    assert out["bert.embeddings.LayerNorm.weight"].shape == (32,)
    assert out["bert.embeddings.token_type_embeddings.weight"].shape == (2, 32)
    assert out["bert.embeddings.word_embeddings.weight"].shape == (128, 32)
    assert out["cls.predictions.bias"].shape == (128,)
    assert out["cls.predictions.bias"][120:].equal(b["cls.predictions.bias"][120:])  # only b has these tokens
