"""Multi-module architectures in families.json (``_modular``): the tables describe what
transformers saves, and ``override_architecture`` picks the table a model is read by."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from mergefile.arch import families, known_architectures, layer_layout, model_modules, modular_families
from mergefile.arch.families import family_for, modular_for
from tests.helpers import cli, cli_json, mergefile_for, read_tensors
from tests.modular_models import TEXT_LAYERS, VISION_LAYERS, make_llava, make_t5


def _names(path: Path) -> list[str]:
    names = []
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            names += list(fh.keys())
    return names


def _config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("modular")
    return {
        "llava": make_llava(root / "llava", 0),
        "llava-b": make_llava(root / "llava-b", 1),
        "siglip": make_llava(root / "siglip", 0, vision="siglip_vision_model"),
        "siglip-b": make_llava(root / "siglip-b", 1, vision="siglip_vision_model"),
        "t5": make_t5(root / "t5", 0),
    }


@pytest.mark.parametrize("name", ["llava", "siglip", "t5"])
def test_table_describes_the_checkpoint(models, name):
    path = models[name]
    names, config = _names(path), _config(path)
    arch = modular_for(config)
    assert arch is not None and arch.name == ("t5" if name == "t5" else "llava")
    mm = model_modules(names, config, arch)
    assert mm.unowned == ()
    assert all(lay.notes == () for lay in mm.layouts.values()), {n: lay.notes for n, lay in mm.layouts.items()}
    owned = [n for lay in mm.layouts.values() for n in lay.names]
    assert sorted(owned) == sorted(names)  # every tensor in exactly one module
    for lay in mm.layouts.values():  # every tensor is pre, post or in a numbered layer
        in_layers = {ln.at(i) for i in range(lay.num_layers) for ln in lay.templates(i)}
        assert set(lay.pre) | set(lay.post) | in_layers == set(lay.names)
    counts = {n: (lay.num_layers, lay.layer_key) for n, lay in mm.layouts.items()}
    if name == "t5":
        assert counts == {"encoder": (2, "num_layers"), "decoder": (3, "num_decoder_layers"), "shared": (0, None)}
        assert mm.layouts["shared"].embedding == "shared.weight"
        assert mm.layouts["shared"].head_names == ("lm_head.weight",)  # absent from the checkpoint: tied
    else:
        assert counts == {
            "text_decoder": (TEXT_LAYERS, "text_config.num_hidden_layers"),
            "vision_tower": (VISION_LAYERS, "vision_config.num_hidden_layers"),
            "multi_modal_projector": (0, None),
        }
        text = mm.layouts["text_decoder"]
        assert text.family == "llama" and text.vocab_key == "text_config.vocab_size"
        assert text.vocab == ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight")
        assert mm.layouts["vision_tower"].vocab == ()  # patch/position embeddings are not token-indexed
    whole = layer_layout(names, config)
    assert whole.family == arch.name and whole.vocab_key == arch.vocab_size_key


def test_modular_entries_are_well_formed():
    for arch in modular_families().values():
        prefixes = [m.prefix for m in arch.modules]
        assert len(set(prefixes)) == len(prefixes), arch.name
        assert len(set(arch.module_names)) == len(arch.module_names)
        assert set(arch.architectures) <= set(known_architectures())
    assert not set(modular_families()) & set(families())


def test_override_architecture_picks_the_family_by_class():
    mistral = {"model_type": "mistral", "architectures": ["MistralForCausalLM"]}
    assert family_for(mistral).name == "mistral"
    assert family_for(mistral, "LlamaForCausalLM").name == "llama"  # the class wins over model_type
    custom = {"model_type": "custom_llava", "architectures": ["CustomLlava"]}
    assert modular_for(custom) is None
    assert modular_for(custom, "LlavaForConditionalGeneration").name == "llava"
    assert modular_for({"model_type": "llava"}, "LlamaForCausalLM") is None


def test_siglip_llava_merge_loads_and_runs(models, tmp_path):
    from transformers import LlavaForConditionalGeneration

    mergefile_for(
        tmp_path, {"a": models["siglip"], "b": models["siglip-b"]}, "out/x: linear { a weight=1 ; b weight=2 }"
    )
    assert cli(tmp_path) == 0
    out, a, b = read_tensors(tmp_path / "out/x"), read_tensors(models["siglip"]), read_tensors(models["siglip-b"])
    assert any(k.startswith("vision_tower.head.") for k in out)
    for k in out:
        torch.testing.assert_close(out[k], (a[k] + 2 * b[k]) / 3, rtol=1e-5, atol=1e-6)
    model, info = LlavaForConditionalGeneration.from_pretrained(tmp_path / "out/x", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    with torch.no_grad():  # text only: the vision path runs in tests/plan/test_modules.py (CLIP)
        logits = model(input_ids=torch.tensor([[1, 5, 6, 7]])).logits
    assert logits.shape == (1, 4, 128) and torch.isfinite(logits).all()


def _custom(models: dict[str, Path], root: Path) -> Path:
    """llava-b under a class name no table knows (a fine-tune saved with its own class)."""
    path = root / "custom"
    shutil.copytree(models["llava-b"], path)
    config = _config(path)
    config.update(architectures=["CustomLlavaForConditionalGeneration"], model_type="custom_llava")
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_override_architecture_makes_an_unknown_class_mergeable(models, tmp_path, capsys):
    custom = _custom(models, tmp_path)
    text = 'model a = "{a}"\nmodel c = "{c}"{o}\n\nout/x: linear {{ c weight=1 ; a weight=1 }}\n'
    mf = tmp_path / "Mergefile"
    mf.write_text(text.format(a=models["llava"], c=custom, o=""))
    capsys.readouterr()
    assert cli(tmp_path, "-n") == 2
    assert "mixes architectures" in capsys.readouterr().err
    mf.write_text(text.format(a=models["llava"], c=custom, o=' (architecture="LlavaForConditionalGeneration")'))
    assert cli(tmp_path) == 0
    out, a, b = read_tensors(tmp_path / "out/x"), read_tensors(models["llava"]), read_tensors(models["llava-b"])
    for k in out:
        torch.testing.assert_close(out[k], (a[k] + b[k]) / 2, rtol=1e-5, atol=1e-6)
    assert _config(tmp_path / "out/x")["architectures"] == ["LlavaForConditionalGeneration"]  # c is the donor


def test_changing_the_override_makes_the_affected_tensors_stale(models, tmp_path, capsys):
    """Read as Llava, a vision tower's patch embedding is an ordinary weight; read as a Llama, the
    same tensor is placed by name and counts as an embedding: its key, and only those like it, change."""
    mf = tmp_path / "Mergefile"
    text = 'model a = "{a}"{o}\nmodel b = "{b}"{o}\n\nout/x: linear {{ a weight=1 ; b weight=1 }}\n'
    cache = tmp_path / "cache"
    mf.write_text(
        text.format(a=models["llava"], b=models["llava-b"], o=' (architecture="LlavaForConditionalGeneration")')
    )
    assert cli(tmp_path, cache=cache) == 0
    mf.write_text(text.format(a=models["llava"], b=models["llava-b"], o=' (architecture="LlamaForCausalLM")'))
    r = cli_json(tmp_path, cache=cache, capsys=capsys)["targets"][0]
    stale = sorted(s["tensor"] for s in r["stale"])
    assert stale == [
        "vision_tower.embeddings.class_embedding",
        "vision_tower.embeddings.patch_embedding.weight",
        "vision_tower.embeddings.position_embedding.weight",
    ]
    assert r["computed"] == 3
    assert _config(tmp_path / "out/x")["architectures"] == ["LlamaForCausalLM"]


@pytest.mark.parametrize(
    ("where", "text"),
    [
        ("Mergefile", 'model a = "{a}" (architecture="LlavaForConditionalGen")\n\nout/x: linear {{ a weight=1 }}\n'),
        (
            "merge.yml",
            "merge_method: linear\nmodels:\n  - model: {{model: {a}, override_architecture: LlavaForConditionalGen}}\n",
        ),
    ],
)
def test_unknown_override_class_is_a_clear_error(models, tmp_path, capsys, where, text):
    (tmp_path / where).write_text(text.format(a=models["llava"]))
    args = ("--config", "merge.yml", "out/x") if where == "merge.yml" else ()
    capsys.readouterr()
    assert cli(tmp_path, "-n", *args) == 2
    err = capsys.readouterr().err
    assert "unknown architecture class 'LlavaForConditionalGen' (override_architecture)" in err
    assert "did you mean 'LlavaForConditionalGeneration'?" in err and f"{where}:" in err
