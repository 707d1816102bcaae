"""Everything mergekit's schema accepts parses, with mergekit's meaning (no tensors here)."""

from __future__ import annotations

import os

import pytest

from mergefile.errors import ConfigError
from mergefile.syntax import (
    AutoRef,
    Param,
    Sym,
    yaml_text_to_target,
    yaml_text_to_targets,
)
from mergefile.syntax.yaml_leniency import coerce, likely_typo


def _target(text: str, **kw):
    seen: list[str] = []
    return yaml_text_to_target(text, "m.yml", "out/x", warn=seen.append, **kw), seen


def _params(t) -> dict:
    return {(p.name, p.filter): p.value for p in t.params}


def test_filter_null_is_a_catch_all_as_in_mergekit():
    t, _ = _target(
        "merge_method: linear\nmodels: [{model: a}]\nparameters:\n  weight:\n"
        "    - {filter: self_attn, value: 0.2}\n    - {filter: null, value: 0.7}\n"
        "    - {filter: mlp, value: 0.9}\n"
    )
    assert _params(t) == {("weight", "self_attn"): 0.2, ("weight", None): 0.7}  # after a catch-all: dead


def test_value_only_list_and_dict_form_references():
    t, _ = _target(
        "merge_method: linear\nmodels:\n  - model: {model: {path: org/x, revision: r1}, lora: l}\n"
        "    parameters: {weight: [{value: 0.5}]}\n"
    )
    src = t.sources[0]
    assert src.ref.text == "org/x@r1" and src.ref.lora.text == "l"
    assert src.params == (Param("weight", 0.5),)


def test_anchors_and_merge_keys():
    text = (
        "defaults: &d {weight: 0.5, density: 0.4}\nmerge_method: ties\nbase_model: b\nmodels:\n"
        "  - model: a\n    parameters:\n      <<: *d\n      density: 0.9\n  - model: c\n    parameters: *d\n"
    )
    t, warned = _target(text)
    assert [{p.name: p.value for p in s.params} for s in t.sources] == [
        {"weight": 0.5, "density": 0.9},
        {"weight": 0.5, "density": 0.4},
    ]
    assert len(warned) == 1 and "unknown key 'defaults' in the config, ignored" in warned[0]


def test_tokenizer_block_chat_template_out_dtype_and_name():
    t, warned = _target(
        "name: only\nmerge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}]\n"
        "tokenizer: {source: union, pad_to_multiple_of: 8}\nchat_template: chatml\n"
        "dtype: bfloat16\nout_dtype: float16\n"
    )
    p = _params(t)
    assert p[("chat_template", None)] == "chatml" and p[("pad_to_multiple_of", None)] == 8
    assert p[("dtype", None)].name == "bfloat16" and p[("out_dtype", None)].name == "float16"
    assert isinstance(p[("tokenizer_source", None)], Sym) and not warned


@pytest.mark.parametrize(
    ("method", "text", "want"),
    [
        ("karcher", "tol: 1e-10", ("tol", 1e-10)),  # PyYAML reads 1e-10 (no dot) as a string
        ("linear", "normalize: 1.0", ("normalize", True)),
        ("linear", "normalize: 'false'", ("normalize", False)),
        ("karcher", "max_iter: 10.0", ("max_iter", 10)),
        ("linear", "weight: '0.5'", ("weight", 0.5)),
        ("ties", "density: [1, '0.5']", ("density", (1, 0.5))),
    ],
)
def test_values_are_coerced_as_mergekit_coerces_them(method, text, want):
    base = "base_model: b\n" if method == "ties" else ""
    t, _ = _target(f"merge_method: {method}\n{base}models: [{{model: a}}, {{model: c}}]\nparameters: {{{text}}}\n")
    got = _params(t)[(want[0], None)]
    assert got == want[1] and type(got) is type(want[1])


def test_coerce_refuses_what_pydantic_refuses():
    assert coerce(bool, 2) == (2, [2]) and coerce(int, 2.5) == (2.5, [2.5]) and coerce(float, "x") == ("x", ["x"])
    assert coerce(float, (0, "1e-3")) == ((0, 1e-3), [])


@pytest.mark.parametrize(
    ("name", "choices", "want"),
    [
        ("lamda", ["lambda", "weight"], "lambda"),
        ("wieght", ["weight"], "weight"),
        ("paramters", ["parameters"], "parameters"),
        ("normalize", ["normalize_weights"], None),
        ("weight", ["filter_wise"], None),
        ("dtype", ["density"], None),
        ("k", ["t"], None),
    ],
)
def test_likely_typo(name, choices, want):
    assert likely_typo(name, choices) == want


def test_a_typo_of_a_used_parameter_stops_with_the_near_match():
    with pytest.raises(
        ConfigError, match=r"m.yml:3:14: unknown parameter 'lamda' for ties \(did you mean 'lambda'\?\)"
    ):
        _target("merge_method: ties\nmodels: [{model: a}]\nparameters: {lamda: 1}\nbase_model: b\n")


def test_top_level_model_name_is_ignored_with_a_warning():
    t, warned = _target("model_name: My-Merge\nmerge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}]\n")
    assert t.method == "linear" and len(warned) == 1 and "'model_name'" in warned[0]


def test_multi_document_warnings_are_once_per_file():
    seen: list[str] = []
    doc = "merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}]\nint_space: 3\n"
    targets = yaml_text_to_targets("name: s\n" + doc + "---\n" + doc, "m.yml", "out/x", warn=seen.append)
    assert len(targets) == 2 and len(seen) == 1


def test_relative_paths_carry_the_working_directory(tmp_path):
    t, _ = _target("merge_method: linear\nmodels: [{model: ./a}]\n", work_dir=str(tmp_path))
    assert t.sources[0].ref == AutoRef("./a", str(tmp_path))
    t, _ = _target("merge_method: linear\nmodels: [{model: ./a}]\n")
    assert t.sources[0].ref.base_dir == os.getcwd()


GENOME = (
    "model_name: My-Evolved-Merge\ngenome:\n  models: [org/a, org/b]\n  merge_method: ties\n"
    "  base_model: org/base\n  layer_granularity: 4\ntasks:\n  - name: my_task\n    weight: 1.0\n"
)


def test_a_genome_file_is_recognised_and_pointed_to_mergebuild_evolve():
    with pytest.raises(
        ConfigError, match=r"m.yml:1:1: this is a mergekit-evolve configuration .*mergebuild evolve m.yml"
    ):
        _target(GENOME)


def test_a_genome_with_a_top_level_model_name_loads_with_a_warning(tmp_path, capsys):
    from mergefile.targets.evolve.config import load_genome_yaml

    (tmp_path / "g.yml").write_text(GENOME)
    cfg = load_genome_yaml(tmp_path / "g.yml")
    assert cfg.genome.merge_method == "ties" and len(cfg.genome.models) == 2
    assert "unknown key 'model_name' in the evolve configuration, ignored" in capsys.readouterr().err
    (tmp_path / "g.yml").write_text(GENOME.replace("tasks:", "taks: 1\ntasks:"))
    with pytest.raises(ConfigError, match="did you mean 'tasks'"):
        load_genome_yaml(tmp_path / "g.yml")
