"""moe(...) targets: Mixtral, Qwen2-MoE and Qwen3-MoE outputs from tiny dense experts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mergefile.errors import ConfigError
from mergefile.targets import gates
from tests.helpers import cli, cli_json, mergefile_for, read_model, read_tensors

IDS = torch.tensor([[1, 5, 9, 33, 60, 7]])
MIXTRAL = """
out/moe: moe(base=base, gate_mode=hidden, experts_per_token=2) {
    a prompts=["solve the math", "prove it"] negative=["hello"]
    b prompts=["def class", "return value"] residual_scale=0.5
    c prompts=["hello there", "thanks"]
}
"""


@pytest.fixture
def work(tmp_path):
    d = tmp_path / "w"
    d.mkdir()
    return d, tmp_path / "cache"


def load_checked(path: Path, cls: str):
    """The output through transformers: no missing, unexpected or mismatched tensor; a forward runs."""
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert type(model).__name__ == cls
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    with torch.no_grad():
        out = model(IDS).logits
    assert out.shape == (1, IDS.shape[1], model.config.vocab_size) and torch.isfinite(out).all()
    return model


def hidden_gates(model_dir: Path, prompts: list[str], negative: list[str] = ()) -> torch.Tensor:
    """Independent reference, mergekit-moe's recipe: the prompts as one batch (BOS text prepended,
    left-padded with BOS) through the model in bfloat16; each layer's input hidden state at the
    last position, summed over prompts and divided by their number; normalised, all in bfloat16."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    tok.pad_token = tok.bos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)

    def mean(ps):
        batch = tok([tok.bos_token + p for p in ps], padding=True, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            hs = model(**batch, output_hidden_states=True).hidden_states
        last = torch.stack([h[:, -1] for h in hs[:-1]])  # (layers, prompts, hidden)
        return last.sum(1) / len(ps)

    v = mean(prompts) - mean(negative) if negative else mean(prompts)
    return v / v.norm(dim=-1, keepdim=True)


def routers(out: dict, layers: int, name: str = "gate.weight") -> torch.Tensor:
    return torch.stack([out[f"model.layers.{i}.mlp.{name}"] for i in range(layers)])  # (layers, experts, hidden)


def test_mixtral_from_llama_experts(tiny_models, work, capsys):
    d, cache = work
    mergefile_for(d, tiny_models, MIXTRAL)
    assert cli_json(d, cache=cache, capsys=capsys)["exit"] == 0
    out_dir = d / "out/moe"
    model = load_checked(out_dir, "MixtralForCausalLM")
    cfg = json.loads((out_dir / "config.json").read_text())
    assert (cfg["model_type"], cfg["num_local_experts"], cfg["num_experts_per_tok"], cfg["intermediate_size"]) == (
        "mixtral",
        3,
        2,
        64,
    )
    assert model.config.num_local_experts == 3
    out, base = read_tensors(out_dir), read_model(tiny_models["base"])
    experts = [read_model(tiny_models[n]) for n in "abc"]
    for i in range(4):
        mlp = f"model.layers.{i}.mlp"
        for e, ex in enumerate(experts):
            gate_up = torch.cat([ex[f"{mlp}.gate_proj.weight"], ex[f"{mlp}.up_proj.weight"]])
            assert out[f"{mlp}.experts.gate_up_proj"][e].equal(gate_up)
            scale = 0.5 if e == 1 else 1.0
            torch.testing.assert_close(out[f"{mlp}.experts.down_proj"][e], ex[f"{mlp}.down_proj.weight"] * scale)
        assert out[f"model.layers.{i}.self_attn.q_proj.weight"].equal(base[f"model.layers.{i}.self_attn.q_proj.weight"])
    assert out["model.embed_tokens.weight"].equal(base["model.embed_tokens.weight"])
    want = torch.stack(
        [
            hidden_gates(tiny_models["base"], ["solve the math", "prove it"], ["hello"]),
            hidden_gates(tiny_models["base"], ["def class", "return value"]),
            hidden_gates(tiny_models["base"], ["hello there", "thanks"]),
        ],
        dim=1,
    )
    assert routers(out, 4).equal(want.to(out["model.layers.0.mlp.gate.weight"].dtype))
    assert "experts:" in (out_dir / "mergekit_moe_config.yml").read_text()


def test_qwen2_moe_with_a_shared_expert(qwen2_models, work, capsys):
    d, cache = work
    body = """
out/moe: moe(base=base, architecture=qwen2_moe, experts_per_token=1) {
    a prompts=["solve the math"]
    b prompts=["def class"]
    c prompts=["hello there"] shared=true residual_scale=0.5
}
"""
    mergefile_for(d, qwen2_models, body)
    assert cli(d, cache=cache) == 0
    model = load_checked(d / "out/moe", "Qwen2MoeForCausalLM")
    cfg = json.loads((d / "out/moe/config.json").read_text())
    assert (cfg["num_experts"], cfg["num_experts_per_tok"], cfg["moe_intermediate_size"]) == (2, 1, 64)
    assert cfg["shared_expert_intermediate_size"] == 64 and cfg["qkv_bias"] is True and model.config.num_experts == 2
    out, base, c = read_tensors(d / "out/moe"), read_model(qwen2_models["base"]), read_model(qwen2_models["c"])
    assert out["model.layers.1.self_attn.q_proj.bias"].equal(base["model.layers.1.self_attn.q_proj.bias"])
    assert out["model.layers.1.mlp.shared_expert.up_proj.weight"].equal(c["model.layers.1.mlp.up_proj.weight"])
    torch.testing.assert_close(
        out["model.layers.1.mlp.shared_expert.down_proj.weight"], c["model.layers.1.mlp.down_proj.weight"] * 0.5
    )
    shared = routers(out, 2, "shared_expert_gate.weight")[:, 0]
    assert shared.equal(hidden_gates(qwen2_models["base"], ["hello there"]).to(shared.dtype))


def test_qwen3_moe_cheap_embed(qwen3_models, work, capsys):
    from transformers import AutoTokenizer

    d, cache = work
    body = """
out/moe: moe(base=base, gate_mode=cheap_embed) {
    a prompts=["solve the math", "prove it"]
    b prompts=["def class"] negative=["hello"]
}
"""
    mergefile_for(d, qwen3_models, body)
    assert cli(d, cache=cache) == 0
    load_checked(d / "out/moe", "Qwen3MoeForCausalLM")
    cfg = json.loads((d / "out/moe/config.json").read_text())
    assert (cfg["model_type"], cfg["num_experts"], cfg["num_experts_per_tok"], cfg["moe_intermediate_size"]) == (
        "qwen3_moe",
        2,
        2,
        64,
    )
    out, base = read_tensors(d / "out/moe"), read_model(qwen3_models["base"])
    assert out["model.layers.0.self_attn.q_norm.weight"].equal(base["model.layers.0.self_attn.q_norm.weight"])
    tok, emb = AutoTokenizer.from_pretrained(qwen3_models["base"]), base["model.embed_tokens.weight"]

    def vec(ps):  # mergekit's: every token of every prompt (BOS prepended) summed, then normalised
        total = sum(emb[[tok.bos_token_id, *tok(p, add_special_tokens=False)["input_ids"]]].float().sum(0) for p in ps)
        return total / total.norm()

    want = torch.stack([vec(["solve the math", "prove it"]), vec(["def class"]) - vec(["hello"])])
    want = want / want.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(routers(out, 2), want.expand(2, 2, 32), rtol=1e-5, atol=1e-5)


def test_random_gates_are_seeded(tiny_models, work, capsys):
    d, cache = work
    body = """
out/r: moe(base=base, gate_mode=random) { a ; b }
out/u: moe(base=base, gate_mode=uniform_random, seed=3) { a ; b }
"""
    mergefile_for(d, tiny_models, body)
    assert cli(d, "out/r", "out/u", cache=cache) == 0
    r, u = routers(read_tensors(d / "out/r"), 4), routers(read_tensors(d / "out/u"), 4)
    assert r.shape == u.shape == (4, 2, 32) and not r[:, 0].equal(r[:, 1])
    assert u.abs().max() <= 32**-0.5 and u.abs().max() > 0.1
    assert cli(d, "-B", "out/r", cache=tmp_cache(d)) == 0  # a fresh cache computes the same bytes
    assert routers(read_tensors(d / "out/r"), 4).equal(r)


def tmp_cache(d: Path) -> Path:
    return d.parent / "other-cache"


def test_editing_one_experts_prompts_recomputes_only_its_gate_rows(tiny_models, work, capsys, monkeypatch):
    d, cache = work
    mergefile_for(d, tiny_models, MIXTRAL)
    first = cli_json(d, cache=cache, capsys=capsys)["targets"][0]
    old, computed, real = routers(read_tensors(d / "out/moe"), 4), [], gates.GateVectors._compute_into

    def counted(self, blobs):  # the experts whose vectors are computed, not read from the cache
        computed.extend(e.name for e in self.experts if e.name in self.keys and blobs.get(self.keys[e.name]) is None)
        return real(self, blobs)

    monkeypatch.setattr(gates.GateVectors, "_compute_into", counted)
    mergefile_for(d, tiny_models, MIXTRAL.replace('"return value"', '"print the value"'))
    r = cli_json(d, cache=cache, capsys=capsys)["targets"][0]
    assert sorted(r["to_compute"]) == [f"model.layers.{i}.mlp.gate.weight" for i in range(4)]
    assert r["computed"] == 4 and first["computed"] == 39
    assert r["cache_hits"] == 4 * 8  # the rest of each rewritten layer shard: attention, norms, experts
    assert len(computed) == 1  # expert b's vectors only; a's and c's from the cache
    new = routers(read_tensors(d / "out/moe"), 4)
    assert new[:, [0, 2]].equal(old[:, [0, 2]]) and not new[:, 1].equal(old[:, 1])
    assert sorted(r["shards_reuse"]) == ["model-00001-of-00006.safetensors", "model-00006-of-00006.safetensors"]


def test_mergekit_moe_yaml_builds_unchanged(tiny_models, work, capsys):
    d, cache = work
    mergefile_for(d, tiny_models, MIXTRAL)
    assert cli(d, cache=cache) == 0
    (d / "moe.yml").write_text(f"""base_model: {tiny_models["base"]}
gate_mode: hidden
dtype: float32
experts_per_token: 2
experts:
  - source_model: {tiny_models["a"]}
    positive_prompts: ["solve the math", "prove it"]
    negative_prompts:
      - "hello"
  - source_model: {tiny_models["b"]}
    positive_prompts: ["def class", "return value"]
    residual_scale: 0.5
  - source_model: {tiny_models["c"]}
    positive_prompts: ["hello there", "thanks"]
""")
    capsys.readouterr()
    assert cli(d, "--json", "--config", "moe.yml", "out/from-yaml", cache=cache) == 0
    report = json.loads(capsys.readouterr().out)["targets"][0]
    assert report["computed"] == 0  # the same keys as the Mergefile recipe: all from the cache
    got, want = read_tensors(d / "out/from-yaml"), read_tensors(d / "out/moe")
    assert sorted(got) == sorted(want) and all(got[k].equal(want[k]) for k in want)
    load_checked(d / "out/from-yaml", "MixtralForCausalLM")


@pytest.mark.parametrize(
    "body, message",
    [
        (
            'out/m: moe(base=base, experts_per_token=3) { a prompts=["x"] ; b prompts=["y"] }',
            "between 1 and the number",
        ),
        ('out/m: moe(base=base) { a prompts=["x"] ; b }', "needs prompts"),
        ('out/m: moe(base=base) { a prompts=["x"] ; b prompts=["x"] }', "same prompts"),
        (
            'out/m: moe(base=base) { a prompts=["x"] ; a prompts=["y"] }',
            "allow_identical_experts",
        ),  # random gates: built, see test_mergekit_paths
        ('out/m: moe(base=base, architecture=qwen3) { a prompts=["x"] ; b prompts=["y"] }', "takes qwen3"),
        (
            'out/m: moe(base=base, architecture=mixtral) { a prompts=["x"] ; b prompts=["y"] ; c shared=true }',
            "needs exactly 0",
        ),
        ('out/m: moe(base=base, gate_mode=hiden) { a prompts=["x"] }', "unknown gate_mode"),
        ('out/m: moe(base=base) { a prompt=["x"] }', "did you mean 'prompts'"),
        ("out/m: moe(gate_mode=random) { a }", "needs base=MODEL"),
    ],
)
def test_bad_moe_targets(tiny_models, work, body, message):
    from mergefile.plan.planner import Planner
    from mergefile.syntax import parse_mergefile

    d, _ = work
    mf = parse_mergefile(mergefile_for(d, tiny_models, body))
    with pytest.raises(ConfigError, match=message):
        Planner(mf).plan("out/m")
