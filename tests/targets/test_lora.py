"""lora(...) targets: PEFT adapters extracted from tiny fine-tunes, loaded back with peft."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from mergefile.cli.main import main
from mergefile.errors import ConfigError
from tests.helpers import cli, cli_json, mergefile_for, read_model, read_tensors

PREFIX = "base_model.model."
IDS = torch.tensor([[1, 5, 9, 33, 60, 7, 101, 2]])


@pytest.fixture
def work(tmp_path):
    d = tmp_path / "w"
    d.mkdir()
    return d, tmp_path / "cache"


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def load(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


def peft_load(base: Path, adapter: Path):
    """Base + adapter through peft; fails on any missing/unexpected adapter key (mergekit #521)."""
    from peft import PeftModel

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(load(base), adapter)
    bad = [str(w.message) for w in caught if "adapter keys" in str(w.message) or "unexpected" in str(w.message).lower()]
    assert not bad, bad
    return model


def deltas_error(adapter: dict, base: dict, ft: dict) -> float:
    """Largest relative error of B @ A against the true delta, over LoRA modules."""
    worst = 0.0
    for k in adapter:
        if not k.endswith(".lora_A.weight"):
            continue
        module = k[len(PREFIX) : -len(".lora_A.weight")]
        a, b = adapter[k], adapter[k.replace("lora_A", "lora_B")]
        delta = ft[module + ".weight"] - base[module + ".weight"]
        worst = max(worst, ((b @ a - delta).norm() / delta.norm()).item())
    return worst


def test_full_rank_adapter_reproduces_the_finetune(tiny_models, work, capsys):
    d, cache = work
    mergefile_for(d, tiny_models, "out/l: lora(finetuned=a, base=base, rank=64)")
    r = cli_json(d, cache=cache, capsys=capsys)
    assert r["exit"] == 0 and r["targets"][0]["built"]
    out = d / "out/l"
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "mergebuild.json"} <= {
        p.name for p in out.iterdir()
    }
    assert not (out / "config.json").exists() and not list(out.glob("model*.safetensors"))
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == cfg["lora_alpha"] == 32
    assert set(cfg["rank_pattern"].values()) == {16} and all(
        m.endswith(("k_proj", "v_proj")) for m in cfg["rank_pattern"]
    )
    assert sorted(cfg["target_modules"]) == [
        "down_proj",
        "gate_proj",
        "k_proj",
        "o_proj",
        "q_proj",
        "up_proj",
        "v_proj",
    ]
    assert {"embed_tokens", "lm_head"} <= set(cfg["modules_to_save"])
    adapter = read_tensors(out)
    assert adapter[PREFIX + "lm_head.weight"].equal(read_model(tiny_models["a"])["lm_head.weight"])
    assert deltas_error(adapter, read_model(tiny_models["base"]), read_model(tiny_models["a"])) < 1e-5
    ft, model = load(tiny_models["a"]), peft_load(tiny_models["base"], out)
    torch.testing.assert_close(logits(model), logits(ft), rtol=1e-4, atol=1e-4)
    merged = model.merge_and_unload().state_dict()
    for k, v in ft.state_dict().items():
        torch.testing.assert_close(merged[k], v, rtol=1e-5, atol=1e-5)


def test_error_falls_as_rank_rises(tiny_models, work, capsys):
    d, cache = work
    ranks = (1, 2, 4, 8, 16, 32)
    body = "\n".join(f"out/r{r}: lora(finetuned=a, base=base, rank={r})" for r in ranks)
    mergefile_for(d, tiny_models, body + "\nall: " + " ".join(f"out/r{r}" for r in ranks))
    assert cli(d, "all", cache=cache) == 0
    base, ft = read_model(tiny_models["base"]), read_model(tiny_models["a"])
    errors = [deltas_error(read_tensors(d / f"out/r{r}"), base, ft) for r in ranks]
    assert all(x > y for x, y in zip(errors, errors[1:])), errors
    assert errors[0] > 0.5 and errors[-1] < 1e-5
    target = logits(load(tiny_models["a"]))
    gaps = [(logits(peft_load(tiny_models["base"], d / f"out/r{r}")) - target).abs().max().item() for r in (1, 8, 32)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-4, gaps


def test_tied_embeddings(tied_models, work, capsys):
    """No lm_head tensor in either model: no KeyError (#484), no empty output (#447), head tied."""
    d, cache = work
    mergefile_for(
        d,
        tied_models,
        "out/l: lora(finetuned=ft, base=base, rank=32)\nout/e: lora(finetuned=ft, base=base, rank=32, embed_lora=true)",
    )
    r = cli_json(d, "out/l", "out/e", cache=cache, capsys=capsys)
    assert r["exit"] == 0
    target = logits(load(tied_models["ft"]))
    for name in ("l", "e"):
        out = d / "out" / name
        cfg = json.loads((out / "adapter_config.json").read_text())
        assert cfg["ensure_weight_tying"] is True
        model = peft_load(tied_models["base"], out)
        torch.testing.assert_close(logits(model), target, rtol=1e-4, atol=1e-4)
        merged = model.merge_and_unload()
        assert merged.lm_head.weight is merged.model.embed_tokens.weight
        torch.testing.assert_close(logits(merged), target, rtol=1e-4, atol=1e-4)
    saved = read_tensors(d / "out/l")
    assert saved[PREFIX + "lm_head.weight"].equal(saved[PREFIX + "model.embed_tokens.weight"])
    assert "embed_tokens" in json.loads((d / "out/l/adapter_config.json").read_text())["modules_to_save"]
    # embed_lora on tied embeddings: saved in full all the same (peft would merge a tied LoRA twice)
    assert read_tensors(d / "out/e").keys() == saved.keys()


def test_editing_one_modules_rank_recomputes_only_that_module(tiny_models, work, capsys):
    d, cache = work
    mergefile_for(d, tiny_models, "out/l: lora(finetuned=a, base=base, rank=4)")
    first = cli_json(d, cache=cache, capsys=capsys)["targets"][0]
    assert first["stage_misses"] == 28  # one SVD per linear module (7 per layer x 4), shared by A and B
    mergefile_for(
        d, tiny_models, "out/l: lora(finetuned=a, base=base, rank=4) {\n  rank[layers.1.self_attn.q_proj] = 2\n}"
    )
    r = cli_json(d, cache=cache, capsys=capsys)["targets"][0]
    module = PREFIX + "model.layers.1.self_attn.q_proj"
    assert sorted(r["to_compute"]) == [module + ".lora_A.weight", module + ".lora_B.weight"]
    assert r["computed"] == 2 and r["stage_misses"] == 1 and r["stage_hits"] == 1
    assert r["cache_hits"] == len(first["stale"]) - 2
    assert {tuple(s["details"]) for s in r["stale"]} == {("rank 4 -> 2",)}
    cfg = json.loads((d / "out/l/adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["rank_pattern"] == {"model.layers.1.self_attn.q_proj": 2} == cfg["alpha_pattern"]
    assert read_tensors(d / "out/l")[module + ".lora_A.weight"].shape == (2, 32)
    assert cli_json(d, cache=cache, capsys=capsys)["up_to_date"]


def test_sv_epsilon_cuts_ranks_from_the_singular_values(tiny_models, work, capsys):
    d, cache = work
    mergefile_for(d, tiny_models, "out/l: lora(finetuned=a, base=base, rank=32, sv_epsilon=0.12)")
    assert cli(d, cache=cache) == 0
    adapter = read_tensors(d / "out/l")
    cfg = json.loads((d / "out/l/adapter_config.json").read_text())
    ranks = {
        k[len(PREFIX) : -len(".lora_A.weight")]: v.shape[0] for k, v in adapter.items() if k.endswith(".lora_A.weight")
    }
    assert cfg["r"] == max(ranks.values()) and 1 <= min(ranks.values()) < cfg["r"] <= 32
    assert cfg["rank_pattern"] == {m: k for m, k in ranks.items() if k != cfg["r"]}
    peft_load(tiny_models["base"], d / "out/l")  # shapes and config agree


def test_options_filter_modules(tiny_models, work, capsys):
    d, cache = work
    body = """
out/l: lora(finetuned=a, base=base, rank=8, exclude_regex=["mlp"], save_modules=["layers.0.self_attn.o_proj"],
            skip_undecomposable=true, distribute_scale=false)
"""
    mergefile_for(d, tiny_models, body)
    assert cli(d, cache=cache) == 0
    cfg = json.loads((d / "out/l/adapter_config.json").read_text())
    adapter = read_tensors(d / "out/l")
    assert not any("mlp" in k for k in adapter)
    assert cfg["modules_to_save"] == ["model.layers.0.self_attn.o_proj"]  # a full name: 'o_proj' would take all
    assert PREFIX + "model.layers.0.self_attn.o_proj.weight" in adapter and not any(
        "norm" in k or "embed" in k for k in adapter
    )
    assert "model.layers.1.self_attn.o_proj" in cfg["target_modules"] and "q_proj" not in cfg["target_modules"]
    a = adapter[PREFIX + "model.layers.1.self_attn.q_proj.lora_A.weight"]
    b = adapter[PREFIX + "model.layers.1.self_attn.q_proj.lora_B.weight"]
    torch.testing.assert_close(b.norm(dim=0), torch.ones(8))  # no distribute_scale: B = U (unit columns)
    norms = a.norm(dim=1)  # ... and A = S Vᵀ: row norms are the singular values, descending
    assert (norms[:-1] >= norms[1:]).all()
    peft_load(tiny_models["base"], d / "out/l")


def test_biases(qwen2_models, work, capsys):
    """Qwen2 has q/k/v biases. Every LoRA module biased: deltas as lora_B.bias (peft's lora_bias);
    only some: the fine-tuned biases whole (bias="lora_only"): lora_bias cannot merge into o_proj."""
    d, cache = work
    body = """
out/all: lora(finetuned=a, base=base, rank=32)
out/qkv: lora(finetuned=a, base=base, rank=32, include_regex=["self_attn.[qkv]_proj"])
"""
    mergefile_for(d, qwen2_models, body)
    assert cli(d, "out/all", "out/qkv", cache=cache) == 0
    base, ft = read_model(qwen2_models["base"]), read_model(qwen2_models["a"])
    name = "model.layers.0.self_attn.q_proj"
    whole, deltas = read_tensors(d / "out/all"), read_tensors(d / "out/qkv")
    assert whole[PREFIX + name + ".base_layer.bias"].equal(ft[name + ".bias"])
    torch.testing.assert_close(deltas[PREFIX + name + ".lora_B.bias"], ft[name + ".bias"] - base[name + ".bias"])
    cfg_all = json.loads((d / "out/all/adapter_config.json").read_text())
    cfg_qkv = json.loads((d / "out/qkv/adapter_config.json").read_text())
    assert (cfg_all["bias"], cfg_all["lora_bias"]) == ("lora_only", False)
    assert (cfg_qkv["bias"], cfg_qkv["lora_bias"]) == ("none", True)
    target = logits(load(qwen2_models["a"]))
    model = peft_load(qwen2_models["base"], d / "out/all")
    torch.testing.assert_close(logits(model), target, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits(model.merge_and_unload()), target, rtol=1e-4, atol=1e-4)
    merged = peft_load(qwen2_models["base"], d / "out/qkv").merge_and_unload().state_dict()
    torch.testing.assert_close(merged[name + ".bias"], ft[name + ".bias"])
    torch.testing.assert_close(merged[name + ".weight"], ft[name + ".weight"], rtol=1e-5, atol=1e-5)


def test_extract_lora_verb_builds_the_same_adapter(tiny_models, work, capsys):
    d, cache = work
    mergefile_for(d, tiny_models, "out/l: lora(finetuned=a, base=base, rank=4) {\n  rank[q_proj] = 2\n}")
    assert cli(d, cache=cache) == 0
    args = [
        "extract-lora",
        str(tiny_models["a"]),
        str(tiny_models["base"]),
        "out/v",
        "--rank",
        "4",
        "--rank-pattern",
        "q_proj=2",
        "-C",
        str(d),
        "--cache-dir",
        str(cache),
        "--json",
    ]
    capsys.readouterr()
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)["targets"][0]
    assert report["computed"] == 0 and report["cache_hits"] > 0  # the same keys as the Mergefile target
    a, v = read_tensors(d / "out/l"), read_tensors(d / "out/v")
    assert sorted(a) == sorted(v) and all(a[k].equal(v[k]) for k in a)
    assert main([*args, "--rank-pattern", "layers.2.mlp.up_proj=1"]) == 0
    report = json.loads(capsys.readouterr().out)["targets"][0]
    assert sorted(report["to_compute"]) == [
        PREFIX + "model.layers.2.mlp.up_proj.lora_A.weight",
        PREFIX + "model.layers.2.mlp.up_proj.lora_B.weight",
    ]


@pytest.mark.parametrize(
    "body, message",
    [
        ("out/l: lora(finetuned=a, base=base, rnak=4)", "did you mean 'rank'"),
        ("out/l: lora(base=base, rank=4)", "needs finetuned=MODEL"),
        ('out/l: lora(finetuned=a, base=base, exclude_regex=["."])', "no LoRA module"),
        ("out/l: lora(finetuned=a, base=base) { a weight=1 }", "takes no model lines"),
        ("out/l: lora(finetuned=a, base=base, sv_epsilon=true)", "must be a number"),
        ("out/l: lora(finetuned=a, base=base) { dtype[q_proj] = float16 }", "takes no [filter]"),
    ],
)
def test_bad_lora_targets(tiny_models, work, body, message):
    from mergefile.plan.planner import Planner
    from mergefile.syntax import parse_mergefile

    d, _ = work
    mf = parse_mergefile(mergefile_for(d, tiny_models, body))
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        Planner(mf).plan("out/l")


def test_planning_kinds_imports_no_torch(tiny_models, work):
    """A dry run of lora, moe and model+lora targets plans and keys them without torch or peft."""
    import subprocess
    import sys

    from tests.helpers import REPO

    d, cache = work
    body = """
model ml = "{base}" + "{adapter}"
out/l: lora(finetuned=a, base=base, rank=4)
out/m: moe(base=base) {{ a prompts=["x"] ; b prompts=["y"] }}
out/x: linear {{ ml weight=1 }}
all: out/l out/m out/x
"""
    mergefile_for(d, tiny_models, "out/l: lora(finetuned=a, base=base, rank=4)")
    assert cli(d, cache=cache) == 0  # an adapter folder to apply
    mergefile_for(d, tiny_models, body.format(base=tiny_models["base"], adapter=d / "out/l"))
    code = (
        "import sys\n"
        "from mergefile.cli.main import main\n"
        f"code = main(['-C', {str(d)!r}, '--cache-dir', {str(cache)!r}, '-n', 'all'])\n"
        "assert code == 0, code\n"
        "assert not {'torch', 'transformers', 'peft'} & set(sys.modules), sorted({'torch', 'transformers', 'peft'} & set(sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr + r.stdout
