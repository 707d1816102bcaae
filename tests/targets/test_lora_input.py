"""``model m = BASE + ADAPTER`` (mergekit's model+lora): a LoRA merged on load, as cached tensors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mergefile.errors import UserError
from mergefile.targets import lora_input
from tests.helpers import cli, cli_json, read_tensors


@pytest.fixture(scope="module")
def adapter(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """A random (non-zero) peft adapter on the tiny base, and peft's own merge of it, saved."""
    import warnings

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("adapter")
    torch.manual_seed(7)
    model = AutoModelForCausalLM.from_pretrained(tiny_models["base"])
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "up_proj"],
        init_lora_weights=False,
        modules_to_save=["lm_head"],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers deprecations inside peft
        peft_model = get_peft_model(model, config)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "modules_to_save" in name:
                    p.add_(0.05)
        peft_model.save_pretrained(root / "adapter")
        peft_model.merge_and_unload().save_pretrained(root / "merged")
    return {"adapter": root / "adapter", "merged": root / "merged"}


def mergefile(d: Path, tiny_models, adapter, body: str) -> None:
    d.mkdir(exist_ok=True)
    head = [f'model {n} = "{tiny_models[n]}"' for n in ("base", "a", "b")]
    head.append(f'model ml = "{tiny_models["base"]}" + "{adapter["adapter"]}"')
    head.append(f'model peft_merged = "{adapter["merged"]}"')
    (d / "Mergefile").write_text("\n".join(head) + "\n\n" + body.strip() + "\n")


def test_merge_with_a_lora_input_equals_the_merge_of_peft_merged_model(tiny_models, adapter, tmp_path, capsys):
    d, cache = tmp_path / "w", tmp_path / "cache"
    mergefile(
        d,
        tiny_models,
        adapter,
        """
out/x: linear { ml weight=0.5 ; b weight=0.5 }
out/y: linear { peft_merged weight=0.5 ; b weight=0.5 }
out/id: linear { ml weight=1 }
""",
    )
    assert cli(d, "out/x", "out/y", "out/id", cache=cache) == 0
    x, y = read_tensors(d / "out/x"), read_tensors(d / "out/y")
    assert sorted(x) == sorted(y)
    for k in x:
        torch.testing.assert_close(x[k], y[k], rtol=0, atol=0)
    merged = read_tensors(adapter["merged"])
    same = read_tensors(d / "out/id")
    assert all(same[k].equal(merged[k]) for k in same)


def test_the_merged_input_is_cached(tiny_models, adapter, tmp_path, capsys, monkeypatch):
    d, cache = tmp_path / "w", tmp_path / "cache"
    mergefile(
        d, tiny_models, adapter, "out/x: linear { ml weight=0.5 ; a weight=0.5 }\nout/p: linear { base weight=1 }"
    )
    merges, real = [], lora_input.LoraApplied._merge_into

    def counted(self, blobs):
        merges.append(self.adapter_dir)  # every peft merge of a model+lora input
        return real(self, blobs)

    monkeypatch.setattr(lora_input.LoraApplied, "_merge_into", counted)
    assert cli_json(d, "out/x", "out/p", cache=cache, capsys=capsys)["exit"] == 0
    assert len(merges) == 1  # one peft merge for every touched tensor
    # untouched tensors keep the base's keys: norms are read from the base files, not re-derived
    man_x = json.loads((d / "out/x/mergebuild.json").read_text())["tensors"]
    man_p = json.loads((d / "out/p/mergebuild.json").read_text())["tensors"]
    assert man_x["model.norm.weight"]["recipe"]["inputs"][0] == man_p["model.norm.weight"]["recipe"]["inputs"][0]
    q = "model.layers.0.self_attn.q_proj.weight"
    assert man_x[q]["recipe"]["inputs"][0] != man_p[q]["recipe"]["inputs"][0]
    # another recipe over the same input: recomputed merges, but no adapter math
    mergefile(
        d,
        tiny_models,
        adapter,
        "out/x: linear { ml weight=0.7 ; a weight=0.3 }\nout/z: linear { ml weight=0.2 ; b weight=0.8 }",
    )
    r = cli_json(d, "out/x", "out/z", cache=cache, capsys=capsys)
    assert r["exit"] == 0 and all(t["computed"] > 0 for t in r["targets"])
    assert len(merges) == 1


def test_mergekit_yaml_model_plus_lora(tiny_models, adapter, tmp_path, capsys):
    d, cache = tmp_path / "w", tmp_path / "cache"
    mergefile(d, tiny_models, adapter, "out/y: linear { peft_merged weight=0.5 ; b weight=0.5 }")
    (d / "merge.yml").write_text(f"""merge_method: linear
models:
  - model: {tiny_models["base"]}+{adapter["adapter"]}
    parameters: {{weight: 0.5}}
  - model: {tiny_models["b"]}
    parameters: {{weight: 0.5}}
""")
    assert cli(d, "out/y", cache=cache) == 0
    assert cli(d, "--config", "merge.yml", "out/from-yaml", cache=cache) == 0
    got, want = read_tensors(d / "out/from-yaml"), read_tensors(d / "out/y")
    assert all(got[k].equal(want[k]) for k in want)


def test_not_an_adapter(tiny_models, tmp_path):
    from mergefile.plan.planner import Planner
    from mergefile.syntax import parse_text

    text = f'model m = "{tiny_models["base"]}" + "{tiny_models["a"]}"\nout/x: linear {{ m weight=1 }}'
    with pytest.raises(UserError, match="not a PEFT adapter folder"):
        Planner(parse_text(text, str(tmp_path / "Mergefile"))).plan("out/x")
