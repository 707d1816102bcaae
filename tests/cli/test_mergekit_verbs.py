"""Drop-in mergekit command lines: ``mergebuild yaml|multi|moe|extract-lora`` with mergekit's flags,
built through the same cache as ``mergebuild --config``; every row of the option table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mergefile.cli import mergekit_options as mk
from mergefile.cli.main import main
from tests.helpers import assert_same_tensors, read_tensors

CONFIG = """\
models:
  - model: models/a
    parameters: {{weight: 0.5, density: 0.5}}
  - model: models/b
    parameters: {{weight: {w}, density: 0.5}}
merge_method: dare_ties
base_model: models/base
dtype: bfloat16
"""
LAZY_1 = ["--copy-tokenizer", "--allow-crimes", "--out-shard-size", "1B", "--lazy-unpickle"]
LAZY_2 = ["--cuda", "--low-cpu-memory", "--lazy-unpickle", "--write-model-card", "--out-shard-size", "1B"]


@pytest.fixture
def work(tiny_models, tmp_path, monkeypatch) -> Path:
    (tmp_path / "models").symlink_to(Path(tiny_models["a"]).parent, target_is_directory=True)
    (tmp_path / "config.yaml").write_text(CONFIG.format(w=0.5))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def mb(*args: str) -> int:
    return (
        main(["--cache-dir", "cache", *args])
        if args[0] not in ("yaml", "multi", "moe", "extract-lora")
        else main([args[0], "--cache-dir", "cache", "--quiet", *args[1:]])
    )


def files(folder: Path) -> dict[str, bytes]:
    """Every file of an output but its manifest (which names the target)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "mergebuild.json"}


@pytest.mark.parametrize("flags", [LAZY_1, LAZY_2], ids=["lazymergekit", "cuda-low-cpu-memory"])
def test_notebook_command_lines_give_the_files_of_config(work, flags, capsys):
    import torch

    assert main(["yaml", "config.yaml", "merge", "--cache-dir", "cache", *flags]) == 0
    err = capsys.readouterr().err
    assert "--lazy-unpickle changes nothing" in err
    if "--cuda" in flags and not torch.cuda.is_available():
        assert "no CUDA device here, computing on the CPU" in err
    assert (
        main(["--config", "config.yaml", "ref/merge", "--out-shard-size", "1B", "--cache-dir", "cache", "--quiet"]) == 0
    )
    got, want = files(work / "merge"), files(work / "ref" / "merge")
    assert sorted(got) == sorted(want) and got == want
    assert "model.safetensors" in got and "tokenizer.json" in got and "README.md" in got


def test_repeated_yaml_is_a_noop(work, capsys):
    assert mb("yaml", "config.yaml", "merge", *LAZY_1) == 0
    before = {p.name: p.stat().st_mtime_ns for p in (work / "merge").iterdir()}
    capsys.readouterr()
    assert mb("yaml", "config.yaml", "merge", *LAZY_1) == 0
    assert "merge is up to date" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (work / "merge").iterdir()} == before
    assert sorted(p.name for p in work.iterdir()) == ["cache", "config.yaml", "merge", "models"]  # no litter


def test_random_seed_is_seed_in_the_config(work):
    assert mb("yaml", "config.yaml", "s7", "--random-seed", "7") == 0
    (work / "seeded.yaml").write_text(CONFIG.format(w=0.5) + "seed: 7\n")
    assert mb("yaml", "seeded.yaml", "c7") == 0
    assert mb("yaml", "config.yaml", "s8", "--random-seed", "8") == 0
    assert_same_tensors(read_tensors(work / "s7"), read_tensors(work / "c7"))
    name = "model.layers.0.mlp.up_proj.weight"
    assert not read_tensors(work / "s7")[name].equal(read_tensors(work / "s8")[name])  # DARE drops differ


def _report(capsys) -> dict:
    return json.loads(capsys.readouterr().out)["targets"][0]


def test_out_shard_size_packs_layers_and_stays_stable_under_edits(work, capsys):
    capsys.readouterr()
    assert mb("yaml", "config.yaml", "merge", "--out-shard-size", "40K", "--json") == 0
    first = _report(capsys)
    shards = sorted(p.name for p in (work / "merge").glob("*.safetensors"))
    assert len(shards) > 1 and shards == first["shards_write"]
    assert all((work / "merge" / s).stat().st_size <= 40_000 for s in shards[:-1])
    index = json.loads((work / "merge" / "model.safetensors.index.json").read_text())["weight_map"]
    layer3 = index["model.layers.3.mlp.up_proj.weight"]
    # one layer's weights change: only its shard is rewritten, every boundary stays
    edited = CONFIG.format(w='[{filter: "layers.3.", value: 0.3}, {value: 0.5}]')
    (work / "config.yaml").write_text(edited)
    assert mb("yaml", "config.yaml", "merge", "--out-shard-size", "40K", "--json") == 0
    second = _report(capsys)
    assert second["shards_write"] == [layer3] and len(second["shards_reuse"]) == len(shards) - 1
    assert json.loads((work / "merge" / "model.safetensors.index.json").read_text())["weight_map"] == index
    assert mb("yaml", "config.yaml", "whole") == 0  # mergekit's default, 5B: one file here
    assert sorted(p.name for p in (work / "whole").glob("*.safetensors")) == ["model.safetensors"]


def test_no_copy_tokenizer_and_no_model_card(work):
    assert mb("yaml", "config.yaml", "bare", "--no-copy-tokenizer", "--no-write-model-card") == 0
    names = {p.name for p in (work / "bare").iterdir()}
    assert "tokenizer.json" not in names and "README.md" not in names and "model.safetensors" in names
    assert mb("yaml", "config.yaml", "bare") == 0  # back to mergekit's defaults: the small files return
    names = {p.name for p in (work / "bare").iterdir()}
    assert {"tokenizer.json", "README.md"} <= names


def _argv(o: mk.Option, negative: bool = False) -> list[str]:
    if o.kind == "bool":
        return [f"--no-{o.flag[2:]}" if negative else o.flag]
    value = {"int": "2", "str": "bfloat16" if o.name == "lora_merge_dtype" else "x", "size": "2B"}.get(o.kind)
    flag = "-v" if o.kind == "count" else o.flag
    return [flag] + ([value] if value else [])


@pytest.mark.parametrize("o", mk.OPTIONS, ids=[o.name for o in mk.OPTIONS])
def test_every_mergekit_option_is_accepted_with_its_no_form(work, o, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(work / "hf"))  # --transformers-cache sets it
    for negative in (False, True) if o.kind == "bool" else (False,):
        argv = _argv(o, negative) if o.name != "device" else ["--device", "cpu"]
        assert main(["yaml", "config.yaml", "merge", "--cache-dir", "cache", "-n", *argv]) == 0, argv
        err = capsys.readouterr().err
        if o.note and not negative and o.default is None:
            assert f"note: {' '.join(argv)} changes nothing: {o.note}" in err
        if o.note and negative and o.default is True:
            assert f"--no-{o.flag[2:]} changes nothing" in err


def test_mapped_options_set_their_mergebuild_equivalents():
    s = mk.build_settings(
        {
            "allow_crimes": True,
            "device": "cuda:1",
            "read_to_gpu": True,
            "num_threads": 3,
            "random_seed": 5,
            "quiet": True,
            "verbosity": 2,
            "transformers_cache": "/hf",
            "out_shard_size": 10,
            "copy_tokenizer": False,
            "write_model_card": False,
        }
    )
    assert s == {
        "allow_crimes": True,
        "device": "cuda:1",
        "read_to_device": True,
        "jobs": 3,
        "target_settings": {"seed": 5},
        "quiet": True,
        "verbose": True,
        "hub_cache": "/hf",
        "out_shard_size": 10,
        "copy_tokenizer": False,
        "write_card": False,
    }
    assert mk.build_settings({"cuda": True})["device"] == "cuda"
    assert mk.build_settings({})["out_shard_size"] == 5 * 10**9  # mergekit's default
    import argparse

    p = argparse.ArgumentParser()
    mk.add_mergekit_options(p)
    rich = mk.given(p.parse_args(["--gpu-rich"]))  # mergekit's alias, expanded as mergekit does
    assert rich == {"cuda": True, "low_cpu_memory": True, "read_to_gpu": True, "multi_gpu": True}
    assert mk.build_settings(rich)["device"] == "cuda" and mk.build_settings(rich)["read_to_device"]
    assert mk.given(p.parse_args(["--no-copy-tokenizer", "-vv", "-j", "4"])) == {
        "copy_tokenizer": False,
        "verbosity": 2,
        "num_threads": 4,
    }


def test_transformers_cache_points_hub_lookups_there(work, tiny_models, monkeypatch, capsys):
    from tests.cli.test_verbs_hub import add_snapshot

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(work / "elsewhere"))
    add_snapshot(work / "tc", "org/a", tiny_models["a"])
    (work / "hub.yaml").write_text("models:\n  - model: org/a\n    parameters: {weight: 1.0}\nmerge_method: linear\n")
    assert mb("yaml", "hub.yaml", "h", "--transformers-cache", str(work / "tc")) == 0
    assert_same_tensors(read_tensors(work / "h"), read_tensors(tiny_models["a"]))


def test_multi_builds_stages_into_the_intermediate_dir(work, capsys):
    from tests.cli.test_yaml_multi import MULTI

    (work / "multi.yml").write_text(MULTI)
    assert mb("multi", "multi.yml", "-I", "stages", "--out-path", "final") == 0
    assert (work / "stages" / "ab" / "model.safetensors").exists() or list(
        (work / "stages" / "ab").glob("*.safetensors")
    )
    assert list((work / "final").glob("*.safetensors"))
    capsys.readouterr()
    assert main(["multi", "multi.yml", "-I", "stages", "--out-path", "final", "--cache-dir", "cache", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["up_to_date"]
    assert (
        main(
            ["multi", "multi.yml", "-I", "stages", "--out-path", "final", "--cache-dir", "cache", "--json", "--no-lazy"]
        )
        == 0
    )
    assert all(t["built"] for t in json.loads(capsys.readouterr().out)["targets"])  # --no-lazy: rebuilt
    assert main(["multi", "multi.yml", "--out-path", "final"]) == 2
    assert "needs --intermediate-dir" in capsys.readouterr().err


def test_moe_verb_builds_a_mergekit_moe_config(work, tiny_models, capsys):
    (work / "moe.yml").write_text("""base_model: models/base
gate_mode: random
dtype: float32
experts_per_token: 2
experts:
  - source_model: models/a
  - source_model: models/a
""")
    assert mb("moe", "moe.yml", "moe-out") == 0  # the same model twice: warned about
    assert "same model is listed as several experts" in capsys.readouterr().err
    assert (
        main(
            [
                "moe",
                "moe.yml",
                "moe-out",
                "--i-understand-this-is-not-useful-without-training",
                "--load-in-4bit",
                "--cache-dir",
                "cache",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err  # the flag says the user means it (allow_identical_experts)
    assert "same model" not in err and "--load-in-4bit/8bit changes nothing" in err
    cfg = json.loads((work / "moe-out" / "config.json").read_text())
    assert cfg["num_local_experts"] == 2 and (work / "moe-out" / "mergekit_moe_config.yml").exists()
    # mergekit-moe's default shard size: the MoE model folder is packed like any other (one file here)
    assert sorted(p.name for p in (work / "moe-out").glob("*.safetensors")) == ["model.safetensors"]


def test_extract_lora_with_mergekit_flags_gives_an_adapter_peft_loads(work, tiny_models, capsys):
    from tests.targets.test_lora import peft_load

    argv = [
        "extract-lora",
        "--model",
        "models/a",
        "--base-model",
        "models/base",
        "--out-path",
        "lora",
        "--max-rank",
        "8",
        "--no-distribute-scale",
        "--no-embed-lora",
        "-e",
        "lm_head",
        "--sv-epsilon",
        "0",
        "--skip-undecomposable",
        "--cuda",
        "--lazy-unpickle",
        "--out-shard-size",
        "1B",
        "-v",
        "--cache-dir",
        "cache",
    ]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "--out-shard-size changes nothing" in err
    cfg = json.loads((work / "lora" / "adapter_config.json").read_text())
    assert cfg["r"] == 8
    peft_load(tiny_models["base"], work / "lora")
    assert main(argv) == 0  # again: nothing recomputed
    assert sorted(p.name for p in work.iterdir()) == ["cache", "config.yaml", "lora", "models"]


def test_global_options_before_a_dropin_verb(work, capsys, monkeypatch):
    monkeypatch.chdir("/")
    assert main(["-C", str(work), "--cache-dir", "cache", "--quiet", "yaml", "config.yaml", "g"]) == 0
    assert list((work / "g").glob("*.safetensors"))
