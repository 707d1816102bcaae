"""The renderers: AST -> Mergefile text, AST -> mergekit YAML, and model naming on import."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from mergefile.errors import ConfigError
from mergefile.syntax import AutoRef, HfRef, PathRef, Sym, parse_text, yaml_text_to_targets
from mergefile.syntax.convert import concrete_ref, model_name, yaml_to_mergefile
from mergefile.syntax.render_mergefile import render_mergefile, value_text
from mergefile.syntax.render_yaml import export_configs, render_yaml
from tests.helpers import assert_same_tensors, cli, mergefile_for, read_tensors

DATA = Path(__file__).parent / "data"


# ---- Mergefile text ---------------------------------------------------------------------------


def test_rendered_example_parses_back_to_the_same_ast():
    mf = parse_text((DATA / "example.mf").read_text(), "F")
    assert parse_text(render_mergefile(mf), "F").statements == mf.statements


@pytest.mark.parametrize(
    "value", [1, -2, 0.5, 1e-05, 1e16, -0.0, True, False, 'a"b\\c\nd\te', (), (0, 1.5), ((1,), "x")]
)
def test_values_round_trip(value):
    mf = parse_text(f"v = {value_text(value)}", "F")
    assert mf.assigns()["v"].value == value and type(mf.assigns()["v"].value) is type(value)


def test_canonical_call_holds_the_settings():
    targets = yaml_text_to_targets(
        "merge_method: ties\nbase_model: org/b\nmodels:\n  - model: org/a\n    parameters: {weight: 1}\n"
        "parameters: {normalize: true}\ndtype: bfloat16\nchat_template: chatml\n",
        "m.yml",
        "out/x",
    )
    text = render_mergefile(yaml_to_mergefile(targets, "Mergefile"))
    assert (
        'out/x: ties(base=b, dtype=bfloat16, chat_template="chatml") {\n    a weight=1\n    normalize = true\n}' in text
    )


def test_non_finite_numbers_and_autorefs_are_refused():
    with pytest.raises(ValueError):
        value_text(float("nan"))
    with pytest.raises(ValueError):
        value_text(AutoRef("org/x"))


# ---- model names and references on import ----------------------------------------------------


def test_model_names_are_readable_and_unique(tmp_path: Path):
    for d in ("x/model", "y/model", "base", "7b", "a b", "m.v1"):
        (tmp_path / d).mkdir(parents=True)
    text = "merge_method: linear\nmodels:\n" + "".join(
        f"  - model: {m}\n    parameters: {{weight: 1}}\n"
        for m in ("x/model", "y/model", "base", "7b", "'a b'", "m.v1", "org/Llama-2@main", "org/Llama-2", "x/model")
    )
    targets = yaml_text_to_targets(text, str(tmp_path / "m.yml"), "out/x")
    mf = yaml_to_mergefile(targets, str(tmp_path / "Mergefile"))
    names = {d.name: d.ref for d in mf.models().values()}
    assert list(names) == ["model_model", "model_model-2", "base_model", "m7b", "a_b", "m.v1", "Llama-2", "Llama-2-2"]
    assert names["model_model"] == PathRef("x/model") and names["Llama-2"] == HfRef("org/Llama-2", "main")
    assert len(mf.targets()["out/x"].sources) == 9  # the repeated folder is one model, used twice
    parse_text(render_mergefile(mf), "F")  # and it is all valid Mergefile text


def test_references_mean_what_the_build_would_read(tmp_path: Path):
    (tmp_path / "local").mkdir()
    sub = tmp_path / "sub"
    assert concrete_ref(AutoRef("local", str(tmp_path)), str(sub)) == PathRef("../local")
    assert concrete_ref(AutoRef("org/x@v2", str(tmp_path)), str(sub)) == HfRef("org/x", "v2")
    assert concrete_ref(AutoRef("/abs/path", str(tmp_path)), str(sub)) == PathRef("/abs/path")
    lora = concrete_ref(AutoRef("local", str(tmp_path), None, AutoRef("org/l@r", str(tmp_path))), str(tmp_path))
    assert lora == PathRef("local", None, HfRef("org/l", "r"))
    assert model_name(lora) == "local-l"
    with pytest.raises(ConfigError, match="neither a local folder nor a hub id"):
        concrete_ref(AutoRef("not a hub id@v1", str(tmp_path)), str(sub))


# ---- mergekit YAML ----------------------------------------------------------------------------

RICH = """\
dtype = float32
seed = 3
w_a = 0.7
normalize = false

model base = "models/base"
model a = "models/a"
model b = "models/b"

out/x: dare_ties(base=base, int8_mask=false) {
    a weight=w_a density=0.6 weight[mlp]=0.2
    b weight=0.4 density=[0.3, 0.9]
    density[self_attn] = 0.5
    int8_mask = true
}
"""


def test_export_spells_out_what_a_mergefile_implies(tmp_path: Path):
    mf = parse_text(RICH, str(tmp_path / "Mergefile"))
    (doc,) = export_configs(mf, "out/x", str(tmp_path / "sub"))
    assert doc == {
        "merge_method": "dare_ties",
        "base_model": "../models/base",
        "models": [
            {
                "model": "../models/a",
                "parameters": {"weight": [{"filter": "mlp", "value": 0.2}, {"value": 0.7}], "density": 0.6},
            },
            {"model": "../models/b", "parameters": {"weight": 0.4, "density": [0.3, 0.9]}},
        ],
        "parameters": {"int8_mask": True, "density": [{"filter": "self_attn", "value": 0.5}], "normalize": False},
        "dtype": "float32",
        "seed": 3,
    }


def test_exported_yaml_builds_the_same_model(tiny_models, tmp_path: Path, capsys):
    (tmp_path / "models").symlink_to(Path(tiny_models["a"]).parent, target_is_directory=True)
    (tmp_path / "Mergefile").write_text(RICH)
    cache = tmp_path / "cache"
    assert cli(tmp_path, "out/x", cache=cache) == 0
    from mergefile.cli.main import main

    os.makedirs(tmp_path / "yaml")
    assert main(["export", "out/x", "-C", str(tmp_path), "-o", "yaml/x.yml"]) == 0
    assert "../models/a" in (tmp_path / "yaml/x.yml").read_text()
    assert cli(tmp_path / "yaml", "--config", "x.yml", "out/y", cache=cache) == 0
    assert_same_tensors(read_tensors(tmp_path / "out/x"), read_tensors(tmp_path / "yaml/out/y"))


def test_export_of_hub_models_loras_tokenizers_and_modules():
    text = """\
model m = hf("org/m", revision="abc") + hf("org/lora")
model n = "/abs/n"
out/x: linear(tokenizer=union, chat_template=chatml) {
    module text { m weight=1 ; n weight=2 }
    module vision { slice { m[0:2] ; n[0:2] ; weight = 0.5 } }
    pad_to_multiple_of = 64
    token["<a>"] = m
    token["<b>"] = zero
    token["<c>"] = [n, "<d>"]
    token["<e>"] = auto
    token_force["<b>"] = true
}
"""
    out = yaml.safe_load(render_yaml(parse_text(text, "/w/Mergefile"), "out/x", "/w"))
    assert out["modules"]["text"]["models"][0]["model"] == "org/m@abc+org/lora"
    assert out["modules"]["vision"]["slices"][0] == {
        "sources": [{"model": "org/m@abc+org/lora", "layer_range": [0, 2]}, {"model": "/abs/n", "layer_range": [0, 2]}],
        "parameters": {"weight": 0.5},
    }
    assert out["tokenizer"] == {
        "source": "union",
        "pad_to_multiple_of": 64,
        "tokens": {
            "<a>": {"source": "org/m@abc+org/lora"},
            "<b>": {"source": {"kind": "zero"}, "force": True},
            "<c>": {"source": {"kind": "model_token", "model": "/abs/n", "token": "<d>"}},
            "<e>": {},
        },
    }
    assert out["chat_template"] == "chatml"


@pytest.mark.parametrize(
    ("text", "target", "message"),
    [
        ("out/x: linear { a weight=1 }\nall: out/x\n", "all", "is a group of targets"),
        ("out/x: evolve(ties, base=b)\n", "out/x", "cannot express it"),
        ("out/x: linear { nope weight=1 }\n", "out/x", "unknown model 'nope'"),
        ("out/x: linear { a weight=1 }\n", "out/y", "unknown target 'out/y'"),
        ('model a = "a"\nout/x: linear { a[0:2] weight=1 }\n', "out/x", "layer range belongs in a 'slice'"),
    ],
)
def test_what_yaml_cannot_say_is_an_error(text: str, target: str, message: str):
    with pytest.raises(ConfigError, match=message):
        render_yaml(parse_text('model a = "a"\n' + text if "model a" not in text else text, "F"), target)


def test_a_mergefile_target_built_from_another_becomes_named_documents(tiny_models, tmp_path: Path):
    mergefile_for(
        tmp_path,
        tiny_models,
        """
out/final: slerp(base=out/ab) { out/ab ; other/c2 ; t = 0.5 }
out/ab: linear { a weight=1 ; b weight=1 }
other/c2: linear { c weight=1 ; base weight=1 }
""",
    )
    from mergefile.syntax import parse_mergefile

    docs = export_configs(parse_mergefile(tmp_path / "Mergefile"), "out/final", str(tmp_path))
    assert [d.get("name") for d in docs] == ["ab", "other/c2", None]
    assert docs[-1]["models"] == [{"model": "ab"}, {"model": "other/c2"}] and docs[-1]["base_model"] == "ab"
    assert Sym("x") == Sym("x")


def test_a_block_line_restating_a_call_keyword_wins(tiny_models, tmp_path: Path):
    """The export writes the later value; the planner must use it too (settings and parameters)."""
    from mergefile.plan.planner import Planner
    from mergefile.syntax import parse_mergefile

    mergefile_for(
        tmp_path,
        tiny_models,
        "out/x: linear(normalize=false, dtype=float16) {\n"
        "    a weight=1\n    b weight=1\n    normalize = true\n    dtype = float32\n}",
    )
    mf = parse_mergefile(tmp_path / "Mergefile")
    job = Planner(mf).plan("out/x").jobs[0]
    assert dict(job.params)["normalize"] is True and job.dtype == "float32"
    (doc,) = export_configs(mf, "out/x", str(tmp_path))
    assert doc["parameters"] == {"normalize": True} and doc["dtype"] == "float32"
