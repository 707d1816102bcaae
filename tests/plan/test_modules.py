"""Multi-module merges (mergekit ``modules:``) of tiny Llavas and T5s, end to end.

Every module is its own layer stack with its own parameters, gradient positions, pre/post
tensors and layer-count key; a YAML config and its imported Mergefile build the same bytes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mergefile.cli.main import main
from mergefile.syntax import parse_mergefile, parse_text, yaml_text_to_targets
from mergefile.syntax.convert import yaml_to_mergefile
from mergefile.syntax.render_mergefile import render_mergefile
from mergefile.syntax.render_yaml import render_yaml
from tests.helpers import age_files, assert_same_tensors, cli, cli_json, mergefile_for, read_tensors
from tests.modular_models import IMAGE_TOKEN, TEXT_LAYERS, VISION_LAYERS, make_family, make_llava, make_t5

TEXT, VISION, PROJ = "language_model.", "vision_tower.", "multi_modal_projector."


@pytest.fixture(scope="module")
def llava(tmp_path_factory) -> dict[str, Path]:
    models = make_family(tmp_path_factory.mktemp("llava"), make_llava)
    age_files(*models.values())
    return models


@pytest.fixture(scope="module")
def t5(tmp_path_factory) -> dict[str, Path]:
    return make_family(tmp_path_factory.mktemp("t5"), make_t5)


def _config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())


def _slerp(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """mergekit's slerp, by hand in float64 (lerp when nearly colinear)."""
    a, b = v0.double().flatten(), v1.double().flatten()
    an, bn = a / max(a.norm().item(), 1e-8), b / max(b.norm().item(), 1e-8)
    dot = float((an * bn).sum())
    if abs(dot) > 0.9995:
        out = (1 - t) * a + t * b
    else:
        theta0 = math.acos(dot)
        s0, s1 = math.sin(theta0 - theta0 * t) / math.sin(theta0), math.sin(theta0 * t) / math.sin(theta0)
        out = s0 * a + s1 * b
    return out.reshape(v0.shape).float()


def _load_llava_and_run(path: Path) -> None:
    from transformers import LlavaForConditionalGeneration

    model, info = LlavaForConditionalGeneration.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    ids = torch.tensor([[1] + [IMAGE_TOKEN] * 4 + [5, 6, 7]])
    with torch.no_grad():
        logits = model(
            input_ids=ids, pixel_values=torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        ).logits
    assert logits.shape == (1, 8, 128) and torch.isfinite(logits).all()


def test_linear_per_module_parameters_by_hand(llava, tmp_path):
    mergefile_for(
        tmp_path,
        llava,
        """
out/x: linear {
    module text_decoder { a weight=1 ; b weight=3 }
    module vision_tower {
        a
        b weight=3
        weight[fc1] = 2
    }
    module multi_modal_projector { a weight=3 ; b ; weight = 0.25 }
    weight = 1
}
""",
    )
    assert cli(tmp_path) == 0
    out, a, b = read_tensors(tmp_path / "out/x"), read_tensors(llava["a"]), read_tensors(llava["b"])
    assert sorted(out) == sorted(a)
    for k in out:
        if k.startswith(TEXT):
            want = (a[k] + 3 * b[k]) / 4  # source weights
        elif k.startswith(VISION):
            wa = 2 if "fc1" in k else 1  # module filter > target for a; b's own weight wins (source > module)
            want = (wa * a[k] + 3 * b[k]) / (wa + 3)
        else:
            want = (3 * a[k] + 0.25 * b[k]) / 3.25  # module weight for b beats the target's
        torch.testing.assert_close(out[k], want, rtol=1e-5, atol=1e-6, msg=k)
    _load_llava_and_run(tmp_path / "out/x")


def test_slerp_gradient_restarts_in_every_module(llava, tmp_path):
    mergefile_for(
        tmp_path,
        llava,
        """
out/x: slerp(base=a) {
    module text_decoder { a ; b ; t = [0, 1] }
    module vision_tower { a ; b ; t = 0.9 }
    module multi_modal_projector { a ; b }
    t = 0.5
}
""",
    )
    assert cli(tmp_path) == 0
    out, a, b = read_tensors(tmp_path / "out/x"), read_tensors(llava["a"]), read_tensors(llava["b"])
    for k in out:
        if k.startswith(TEXT):  # t = idx / (L - 1) over the 3 text layers; embeddings, norm, head at 0
            layer = k.split("layers.")[1].split(".")[0] if ".layers." in k else None
            t = int(layer) / (TEXT_LAYERS - 1) if layer is not None else 0.0
        else:
            t = 0.9 if k.startswith(VISION) else 0.5
        torch.testing.assert_close(out[k], _slerp(t, a[k], b[k]), rtol=1e-4, atol=1e-5, msg=k)


def test_frankenmerge_of_the_text_module_rewrites_only_its_layer_count(llava, tmp_path):
    mergefile_for(
        tmp_path,
        llava,
        """
out/x: passthrough {
    module text_decoder {
        slice a[0:2]
        slice b[1:3]
    }
    module vision_tower { a }
    module multi_modal_projector { a }
}
""",
    )
    assert cli(tmp_path) == 0
    config, donor = _config(tmp_path / "out/x"), _config(llava["a"])
    assert config["text_config"]["num_hidden_layers"] == 4
    assert config["vision_config"] == donor["vision_config"]
    donor["text_config"]["num_hidden_layers"] = 4
    dtypes = ("dtype", "torch_dtype")  # publishing states the output dtype
    assert {k: v for k, v in config.items() if k not in dtypes} == {k: v for k, v in donor.items() if k not in dtypes}
    out, a, b = read_tensors(tmp_path / "out/x"), read_tensors(llava["a"]), read_tensors(llava["b"])
    layer = "language_model.model.layers.{}.mlp.up_proj.weight"
    assert torch.equal(out[layer.format(1)], a[layer.format(1)]) and torch.equal(
        out[layer.format(3)], b[layer.format(2)]
    )
    assert torch.equal(out["language_model.model.embed_tokens.weight"], a["language_model.model.embed_tokens.weight"])
    assert torch.equal(out["language_model.model.norm.weight"], b["language_model.model.norm.weight"])  # last slice
    vision = [k for k in out if k.startswith(VISION)]
    assert len({k for k in vision if ".layers." in k}) == 16 * VISION_LAYERS
    assert all(torch.equal(out[k], a[k]) for k in vision)
    assert (tmp_path / "out/x/preprocessor_config.json").read_text() == (
        llava["a"] / "preprocessor_config.json"
    ).read_text()
    _load_llava_and_run(tmp_path / "out/x")


def test_post_layer_tensors_come_from_every_model_of_the_last_slice(llava, tmp_path):
    """mergekit pairs the first slice's tensor list with the last slice's models (a zip that
    drops models when the slices differ in size); here the last slice's models all count."""
    mergefile_for(
        tmp_path,
        llava,
        """
out/x: linear {
    module text_decoder {
        slice a[0:2] weight=1
        slice { a[2:3] weight=1 ; b[2:3] weight=3 }
    }
    module vision_tower { a weight=1 }
    module multi_modal_projector { a weight=1 }
}
""",
    )
    assert cli(tmp_path) == 0
    out, a, b = read_tensors(tmp_path / "out/x"), read_tensors(llava["a"]), read_tensors(llava["b"])
    for k in ("language_model.model.norm.weight", "language_model.lm_head.weight"):
        torch.testing.assert_close(out[k], (a[k] + 3 * b[k]) / 4, rtol=1e-5, atol=1e-6)
    k = "language_model.model.embed_tokens.weight"
    assert torch.equal(out[k], a[k])


def test_models_syntax_merges_every_module(llava, tmp_path):
    mergefile_for(tmp_path, llava, "out/x: linear { a weight=1 ; b weight=1 }")
    assert cli(tmp_path) == 0
    out, a, b = read_tensors(tmp_path / "out/x"), read_tensors(llava["a"]), read_tensors(llava["b"])
    assert sorted(out) == sorted(a)
    for k in out:
        torch.testing.assert_close(out[k], (a[k] + b[k]) / 2, rtol=1e-5, atol=1e-6)


YAML = """\
merge_method: slerp
base_model: {a}
modules:
  text_decoder:
    slices:
      - sources:
          - {{model: {a}, layer_range: [0, 3]}}
          - {{model: {b}, layer_range: [0, 3]}}
        parameters: {{t: [0, 1]}}
      - sources:
          - {{model: {a}, layer_range: [2, 3]}}
          - {{model: {b}, layer_range: [2, 3]}}
  vision_tower:
    models: [{{model: {a}}}, {{model: {b}}}]
    parameters:
      t: [{{filter: mlp, value: 0.8}}, {{value: 0.2}}]
  multi_modal_projector:
    models: [{{model: {a}}}, {{model: {b}}}]
parameters:
  t: 0.5
"""


def test_yaml_and_imported_mergefile_build_the_same_bytes(llava, tmp_path):
    (tmp_path / "merge.yml").write_text(YAML.format(a=llava["a"], b=llava["b"]))
    assert cli(tmp_path, "--config", "merge.yml", "out/yaml") == 0
    assert main(["import", "merge.yml", "--target", "out/mf", "-C", str(tmp_path), "-o", "Mergefile"]) == 0
    text = (tmp_path / "Mergefile").read_text()
    assert "module text_decoder {" in text and "t[mlp] = 0.8" in text
    assert cli(tmp_path, "out/mf") == 0
    assert_same_tensors(read_tensors(tmp_path / "out/yaml"), read_tensors(tmp_path / "out/mf"))
    assert _config(tmp_path / "out/yaml") == _config(tmp_path / "out/mf")
    assert _config(tmp_path / "out/mf")["text_config"]["num_hidden_layers"] == 4
    # export -> import gives the same Mergefile back
    mf = parse_mergefile(tmp_path / "Mergefile")
    exported = render_yaml(mf, "out/mf", str(tmp_path))
    again = yaml_to_mergefile(
        yaml_text_to_targets(exported, str(tmp_path / "e.yml"), "out/mf"), str(tmp_path / "Mergefile")
    )
    assert parse_text(render_mergefile(again), str(tmp_path / "Mergefile")).statements == mf.statements


def test_editing_one_module_rebuilds_only_its_tensors(llava, tmp_path, capsys):
    mf = mergefile_for(
        tmp_path,
        llava,
        """
out/x: slerp(base=a) {
    module text_decoder { a ; b ; t = 0.3 }
    module vision_tower { a ; b ; t = 0.6 }
    module multi_modal_projector { a ; b ; t = 0.5 }
}
""",
    )
    cache = tmp_path / "cache"
    assert cli(tmp_path, cache=cache) == 0
    mf.write_text(mf.read_text().replace("t = 0.6", "t = 0.7"))
    r = cli_json(tmp_path, cache=cache, capsys=capsys)["targets"][0]
    vision = [k for k in read_tensors(llava["a"]) if k.startswith(VISION)]
    assert r["computed"] == len(vision)
    assert sorted(s["tensor"] for s in r["stale"]) == sorted(vision)
    assert {s["reason"] for s in r["stale"]} == {"param_changed"}
    assert len(r["shards_write"]) == 2 + VISION_LAYERS  # the vision module's pre, layer and post shards


def test_unknown_module_is_exit_2_with_a_suggestion(llava, tmp_path, capsys):
    mergefile_for(
        tmp_path,
        llava,
        """
out/x: linear {
    module text_decoder { a weight=1 }
    module vision_towr { a weight=1 }
    module multi_modal_projector { a weight=1 }
}
""",
    )
    capsys.readouterr()
    assert cli(tmp_path, "-n") == 2
    err = capsys.readouterr().err
    assert "Mergefile:7:5: unknown module 'vision_towr' for LlavaForConditionalGeneration" in err
    assert "did you mean 'vision_tower'?" in err


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("module text_decoder { a weight=1 }", "no block for module(s) vision_tower, multi_modal_projector"),
        ("slice a[0:2]", "slices go inside 'module' blocks"),
        (
            "module text_decoder { a weight=1 }\n module vision_tower { a weight=1 }\n"
            " module multi_modal_projector { slice a[0:1] }",
            "this module has no layer stack to slice",
        ),
        (
            "module text_decoder { slice a[0:4] }\n module vision_tower { a }\n module multi_modal_projector { a }",
            "layer range [0:4] is beyond model 'a', which has 3 layers",
        ),
        (
            "module text_decoder { a weight=1 }\n module vision_tower { a weight=1 ; weigth = 2 }\n"
            " module multi_modal_projector { a weight=1 }",
            "unknown parameter for linear 'weigth'",
        ),
    ],
)
def test_bad_module_recipes_are_exit_2(llava, tmp_path, capsys, body, message):
    mergefile_for(tmp_path, llava, "out/x: linear {\n " + body + "\n}")
    capsys.readouterr()
    assert cli(tmp_path, "-n") == 2
    assert message in capsys.readouterr().err


def test_module_blocks_on_a_single_stack_model_name_the_known_architectures(tiny_models, tmp_path, capsys):
    mergefile_for(tmp_path, tiny_models, "out/x: linear {\n    module text_decoder { a weight=1 }\n}")
    capsys.readouterr()
    assert cli(tmp_path, "-n") == 2
    err = capsys.readouterr().err
    assert "model 'a' (LlamaForCausalLM) is not a known multi-module architecture" in err
    assert "LlavaForConditionalGeneration (text_decoder, vision_tower, multi_modal_projector)" in err


def test_t5_modules_merge_load_and_run(t5, tmp_path):
    from transformers import T5ForConditionalGeneration

    mergefile_for(
        tmp_path,
        t5,
        """
out/x: task_arithmetic(base=base) {
    module encoder { a weight=0.7 ; b weight=0.3 }
    module decoder { a weight=0.2 ; b weight=0.5 }
    module shared { a ; b ; weight = 0.5 }
}
out/f: passthrough {
    module encoder { a }
    module decoder { slice a[0:3] ; slice b[2:3] }
    module shared { b }
}
""",
    )
    assert cli(tmp_path, "out/x", "out/f") == 0
    out, base, a, b = (read_tensors(p) for p in (tmp_path / "out/x", t5["base"], t5["a"], t5["b"]))
    assert "lm_head.weight" not in out and _config(tmp_path / "out/x")["tie_word_embeddings"] is True
    for k in out:
        wa, wb = {"encoder": (0.7, 0.3), "decoder": (0.2, 0.5)}.get(k.split(".")[0], (0.5, 0.5))
        torch.testing.assert_close(
            out[k], base[k] + wa * (a[k] - base[k]) + wb * (b[k] - base[k]), rtol=1e-5, atol=1e-6
        )
    config = _config(tmp_path / "out/f")
    assert (config["num_layers"], config["num_decoder_layers"]) == (2, 4)
    for name in ("x", "f"):
        model, info = T5ForConditionalGeneration.from_pretrained(tmp_path / "out" / name, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([[5, 6, 7, 1]]), decoder_input_ids=torch.tensor([[0, 5, 6]])).logits
        assert logits.shape == (1, 3, 128) and torch.isfinite(logits).all()


def test_tokenizer_padding_reaches_the_text_module_only(llava, tmp_path):
    mergefile_for(
        tmp_path, llava, "out/x: linear(tokenizer_source=union, pad_to_multiple_of=96) { a weight=1 ; b weight=1 }"
    )
    assert cli(tmp_path) == 0
    config, out = _config(tmp_path / "out/x"), read_tensors(tmp_path / "out/x")
    assert config["text_config"]["vocab_size"] == 192 and "vocab_size" not in config
    assert out["language_model.model.embed_tokens.weight"].shape == (192, 32)
    assert out["language_model.lm_head.weight"].shape == (192, 32)
    assert out["vision_tower.embeddings.position_embedding.weight"].shape == (5, 16)  # not token-indexed
    from transformers import LlavaForConditionalGeneration

    _, info = LlavaForConditionalGeneration.from_pretrained(tmp_path / "out/x", output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"], info
