"""End-to-end builds of tiny models: values, incrementality, multi-stage, output folders."""

import json

import pytest
import torch

from tests.helpers import (
    age_files,
    assert_same_tensors,
    cli,
    cli_json,
    mergefile_for,
    read_model,
    read_tensors,
    shard_bytes,
)


@pytest.fixture
def work(tmp_path):
    return tmp_path / "w", tmp_path / "cache"


def test_linear_matches_hand_computed(tiny_models, work, capsys):
    d, cache = work
    d.mkdir()
    mergefile_for(d, tiny_models, "out/x: linear { a weight=1 ; b weight=3 }")
    r = cli_json(d, cache=cache, capsys=capsys)
    assert r["exit"] == 0 and r["targets"][0]["built"]
    out = read_tensors(d / "out/x")
    a, b = read_model(tiny_models["a"]), read_model(tiny_models["b"])
    assert sorted(out) == sorted(a)
    for k in out:
        torch.testing.assert_close(out[k], (a[k] + 3 * b[k]) / 4, rtol=1e-6, atol=1e-7)


def test_task_arithmetic_matches_hand_computed(tiny_models, work, capsys):
    d, cache = work
    d.mkdir()
    mergefile_for(d, tiny_models, "out/x: task_arithmetic(base=base) { a weight=0.5 ; b weight=0.25 }")
    assert cli(d, cache=cache) == 0
    out = read_tensors(d / "out/x")
    base, a, b = (read_model(tiny_models[n]) for n in ("base", "a", "b"))
    for k in out:
        torch.testing.assert_close(
            out[k], base[k] + 0.5 * (a[k] - base[k]) + 0.25 * (b[k] - base[k]), rtol=1e-5, atol=1e-6
        )


def test_output_loads_and_generates(tiny_models, work):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, cache = work
    d.mkdir()
    mergefile_for(d, tiny_models, "out/f: passthrough {\n slice a[0:3]\n slice b[1:4]\n}")
    assert cli(d, cache=cache) == 0
    out = d / "out/f"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 6
    assert (out / "model.safetensors.index.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("hello world", return_tensors="pt").input_ids
    gen = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] == ids.shape[1] + 4
    assert len(model.model.layers) == 6


def test_noop_rebuild_reads_nothing(tiny_models, work, capsys, monkeypatch):
    d, cache = work
    d.mkdir()
    age_files(tiny_models["a"], tiny_models["b"])  # freshly written files are "racy" and re-hashed once
    mergefile_for(d, tiny_models, "out/x: linear { a weight=1 ; b weight=1 }")
    assert cli(d, cache=cache) == 0
    from mergefile.io import reader

    monkeypatch.setattr(reader.TensorReader, "get", lambda *a, **k: pytest.fail("no-op read a tensor"))
    monkeypatch.setattr(reader, "digest_tensors", lambda *a, **k: pytest.fail("no-op hashed a file"))
    r = cli_json(d, cache=cache, capsys=capsys)
    t = r["targets"][0]
    assert t["up_to_date"] and not t["built"] and t["bytes_read"] == 0 and t["computed"] == 0
    capsys.readouterr()
    assert cli(d, cache=cache) == 0
    assert "up to date" in capsys.readouterr().out


def test_one_layer_edit_recomputes_one_layer(tiny_models, work, capsys):
    d, cache = work
    d.mkdir()
    mf = mergefile_for(d, tiny_models, "out/x: linear {\n a weight=1\n b weight=1\n}")
    assert cli(d, cache=cache) == 0
    before = shard_bytes(d / "out/x")
    mf.write_text(mf.read_text().replace(" b weight=1", ' b weight=1 weight["layers.2."]=2'))
    r = cli_json(d, cache=cache, capsys=capsys)["targets"][0]
    assert r["computed"] == 9  # the 9 tensors of one Llama layer
    assert all(".layers.2." in s["tensor"] for s in r["stale"])
    assert {s["reason"] for s in r["stale"]} == {"param_changed"}
    assert len(r["shards_write"]) == 1
    after = shard_bytes(d / "out/x")
    changed = [k for k in after if after[k] != before.get(k)]
    assert changed == r["shards_write"]


def test_edit_then_revert_is_served_from_cache(tiny_models, work, capsys):
    d, cache = work
    d.mkdir()
    mf = mergefile_for(d, tiny_models, "out/x: linear { a weight=1 ; b weight=1 }")
    assert cli(d, cache=cache) == 0
    first = shard_bytes(d / "out/x")
    text = mf.read_text()
    mf.write_text(text.replace("b weight=1", "b weight=2"))
    assert cli(d, cache=cache) == 0
    mf.write_text(text)
    r = cli_json(d, cache=cache, capsys=capsys)["targets"][0]
    assert r["built"] and r["computed"] == 0 and r["cache_hits"] > 0
    assert shard_bytes(d / "out/x") == first


def test_multi_stage_and_phony(tiny_models, work, capsys):
    d, cache = work
    d.mkdir()
    mf = mergefile_for(
        d,
        tiny_models,
        """
out/ab: linear { a weight=1 ; b weight=1 }
out/abc: task_arithmetic(base=base) { out/ab weight=1 ; c weight=0.5 }
all: out/ab out/abc
""",
    )
    r = cli_json(d, "all", cache=cache, capsys=capsys)
    assert [t["target"] for t in r["targets"]] == ["out/ab", "out/abc"]
    base, a, b, c = (read_model(tiny_models[n]) for n in ("base", "a", "b", "c"))
    out = read_tensors(d / "out/abc")
    for k in out:
        ab = (a[k] + b[k]) / 2
        torch.testing.assert_close(out[k], base[k] + (ab - base[k]) + 0.5 * (c[k] - base[k]), rtol=1e-5, atol=1e-6)
    # editing the first stage makes the second stale too, and says why
    mf.write_text(mf.read_text().replace("b weight=1 }", "b weight=2 }", 1))
    capsys.readouterr()
    assert cli(d, "-n", "--explain", "out/abc", cache=cache) == 0
    text = capsys.readouterr().out
    assert "weight of b 1.0 -> 2.0" in text
    assert "out/ab (content) changed" in text
    assert cli(d, "-q", "all", cache=cache) == 1
    assert cli(d, "all", cache=cache) == 0
    assert cli(d, "-q", "all", cache=cache) == 0


def test_force_rebuild_is_identical(tiny_models, work, capsys):
    d, cache = work
    d.mkdir()
    mergefile_for(d, tiny_models, "out/x: linear { a weight=1 ; b weight=1 }")
    assert cli(d, cache=cache) == 0
    first = shard_bytes(d / "out/x")
    r = cli_json(d, "-B", cache=cache, capsys=capsys)["targets"][0]
    assert r["built"] and {s["reason"] for s in r["stale"]} == {"forced"}
    assert shard_bytes(d / "out/x") == first


def test_dtypes(tiny_models_bf16, work):
    d, cache = work
    d.mkdir()
    mergefile_for(d, tiny_models_bf16, "out/x: linear(dtype=float32, out_dtype=float16) { a weight=1 ; b weight=1 }")
    assert cli(d, cache=cache) == 0
    out = read_tensors(d / "out/x")
    a, b = read_model(tiny_models_bf16["a"]), read_model(tiny_models_bf16["b"])
    for k in out:
        assert out[k].dtype == torch.float16
        torch.testing.assert_close(out[k], ((a[k].float() + b[k].float()) / 2).half())
    assert json.loads((d / "out/x/config.json").read_text())["torch_dtype"] == "float16"


def test_modified_output_is_repaired(tiny_models, work, capsys):
    d, cache = work
    d.mkdir()
    mergefile_for(d, tiny_models, "out/x: linear { a weight=1 ; b weight=1 }")
    assert cli(d, cache=cache) == 0
    first = shard_bytes(d / "out/x")
    victim = sorted((d / "out/x").glob("*.safetensors"))[2]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    r = cli_json(d, cache=cache, capsys=capsys)["targets"][0]
    assert r["built"] and r["computed"] == 0 and r["shards_write"] == [victim.name]
    assert shard_bytes(d / "out/x") == first


def test_failed_build_keeps_previous_output(tiny_models, work, tmp_path, capsys):
    import shutil

    d, cache = work
    d.mkdir()
    broken = tmp_path / "broken"
    shutil.copytree(tiny_models["b"], broken)
    mergefile_for(d, {"a": tiny_models["a"], "b": broken}, "out/x: linear { a weight=1 ; b weight=1 }")
    assert cli(d, cache=cache) == 0
    first = shard_bytes(d / "out/x")
    st = (broken / "model.safetensors").stat().st_size
    with open(broken / "model.safetensors", "r+b") as f:
        f.truncate(st - 1000)
    capsys.readouterr()
    code = cli(d, cache=cache)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "model.safetensors" in err
    assert shard_bytes(d / "out/x") == first
    assert not [p for p in (d / "out").iterdir() if p.name.startswith(".x.mergebuild-tmp")]


def test_pickled_inputs_need_a_flag(tiny_models, work, tmp_path, capsys):
    from safetensors.torch import load_file

    d, cache = work
    d.mkdir()
    pk = tmp_path / "pickled"
    pk.mkdir()
    src = tiny_models["b"]
    for f in src.iterdir():
        if f.suffix != ".safetensors" and f.is_file():
            (pk / f.name).write_bytes(f.read_bytes())
    torch.save(load_file(str(src / "model.safetensors")), pk / "pytorch_model.bin")
    mergefile_for(d, {"a": tiny_models["a"], "b": pk}, "out/x: linear { a weight=1 ; b weight=1 }")
    capsys.readouterr()
    assert cli(d, cache=cache) == 2
    assert "--allow-pickle" in capsys.readouterr().err
    assert cli(d, "--allow-pickle", cache=cache) == 0
    out = read_tensors(d / "out/x")
    a, b = read_model(tiny_models["a"]), read_model(tiny_models["b"])
    for k in out:
        torch.testing.assert_close(out[k], (a[k] + b[k]) / 2)


def test_yaml_config_builds_same_as_mergefile(tiny_models, work, capsys):
    d, cache = work
    d.mkdir()
    (d / "merge.yml").write_text(
        f"""merge_method: linear
models:
  - model: {tiny_models["a"]}
    parameters:
      weight: 1.0
  - model: {tiny_models["b"]}
    parameters:
      weight:
        - filter: mlp
          value: 3.0
        - value: 1.0
dtype: float32
"""
    )
    assert cli(d, "--config", "merge.yml", "out/yaml", cache=cache) == 0
    mergefile_for(d, tiny_models, "out/mf: linear(dtype=float32) { a weight=1 ; b weight=1 weight[mlp]=3 }")
    assert cli(d, "out/mf", cache=cache) == 0
    assert_same_tensors(read_tensors(d / "out/yaml"), read_tensors(d / "out/mf"))
