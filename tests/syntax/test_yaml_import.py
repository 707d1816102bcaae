"""mergekit YAML configs -> the same AST as the Mergefile (reference §2.7 examples + errors)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mergefile.errors import ConfigError, Loc, MergefileSyntaxError, UserError
from mergefile.syntax import AutoRef, Param, Slice, Source, Sym, Target, load_yaml_target, yaml_text_to_target

TIES = """\
models:
  - model: psmathur/orca_mini_v3_13b
    parameters:
      density: [1, 0.7, 0.1] # density gradient
      weight: 1.0
  - model: garage-bAInd/Platypus2-13B
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1] # weight gradient
  - model: WizardLM/WizardMath-13B-V1.0
    parameters:
      density: 0.33
      weight:
        - filter: mlp
          value: 0.5
        - value: 0
merge_method: ties
base_model: TheBloke/Llama-2-13B-fp16
parameters:
  normalize: true
  int8_mask: true
dtype: float16
"""

GRADIENT_SLERP = """\
slices:
  - sources:
      - model: psmathur/orca_mini_v3_13b
        layer_range: [0, 40]
      - model: garage-bAInd/Platypus2-13B
        layer_range: [0, 40]
merge_method: slerp
base_model: psmathur/orca_mini_v3_13b
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5 # fallback for rest of tensors
dtype: float16
"""

FRANKEN_44 = """\
slices:
  - sources:
    - model: psmathur/orca_mini_v3_13b
      layer_range: [0, 24]
  - sources:
    - model: garage-bAInd/Platypus2-13B
      layer_range: [20, 40]
merge_method: passthrough
dtype: float16
"""


OK = "merge_method: slerp\nmodels:\n  - model: a\n"


def A(text: str) -> AutoRef:
    return AutoRef(text, os.getcwd())  # mergekit reads model paths from the working directory


def P(name: str, value, filter: str | None = None) -> Param:  # noqa: A002 - mirrors the field
    return Param(name, value, filter)


def convert(text: str, name: str = "out/x") -> Target:
    return yaml_text_to_target(text, "cfg/merge.yml", name)


def test_ties_example() -> None:
    t = convert(TIES)
    assert t == Target(
        name="out/x",
        method="ties",
        params=(
            P("base", A("TheBloke/Llama-2-13B-fp16")),
            P("dtype", Sym("float16")),
            P("normalize", True),
            P("int8_mask", True),
        ),
        sources=(
            Source(A("psmathur/orca_mini_v3_13b"), None, (P("density", (1, 0.7, 0.1)), P("weight", 1.0))),
            Source(A("garage-bAInd/Platypus2-13B"), None, (P("density", 0.5), P("weight", (0, 0.3, 0.7, 1)))),
            Source(
                A("WizardLM/WizardMath-13B-V1.0"),
                None,
                (P("density", 0.33), P("weight", 0.5, "mlp"), P("weight", 0)),
            ),
        ),
    )
    assert t.origin == TIES
    assert t.method_loc == Loc("cfg/merge.yml", 17, 15)
    assert t.sources[2].params[1].loc == Loc("cfg/merge.yml", 14, 11)
    assert type(t.sources[0].params[1].value) is float


def test_gradient_slerp_example() -> None:
    assert convert(GRADIENT_SLERP) == Target(
        name="out/x",
        method="slerp",
        params=(
            P("base", A("psmathur/orca_mini_v3_13b")),
            P("dtype", Sym("float16")),
            P("t", (0, 0.5, 0.3, 0.7, 1), "self_attn"),
            P("t", (1, 0.5, 0.7, 0.3, 0), "mlp"),
            P("t", 0.5),
        ),
        slices=(
            Slice(
                (
                    Source(A("psmathur/orca_mini_v3_13b"), (0, 40)),
                    Source(A("garage-bAInd/Platypus2-13B"), (0, 40)),
                )
            ),
        ),
    )


def test_frankenmerge_example() -> None:
    t = convert(FRANKEN_44, "out/frank")
    assert t == Target(
        name="out/frank",
        method="passthrough",
        params=(P("dtype", Sym("float16")),),
        slices=(
            Slice((Source(A("psmathur/orca_mini_v3_13b"), (0, 24)),)),
            Slice((Source(A("garage-bAInd/Platypus2-13B"), (20, 40)),)),
        ),
    )
    assert sum(s.sources[0].layers[1] - s.sources[0].layers[0] for s in t.slices) == 44


def test_slice_level_base_and_parameters() -> None:
    text = """\
merge_method: slerp
slices:
  - sources:
      - model: a
        layer_range: [0, 8]
        parameters: {t: 0.3}
      - model: b
        layer_range: [0, 8]
    base_model: a
    parameters:
      t: {filter: "*", value: 0.4}
"""
    t = convert(text)
    assert t.slices == (
        Slice(
            (Source(A("a"), (0, 8), (P("t", 0.3),)), Source(A("b"), (0, 8))),
            (P("base", A("a")), P("t", 0.4)),
        ),
    )


def test_entries_after_a_catch_all_are_dropped() -> None:
    """mergekit never reaches them (first match wins); the AST prefers filtered entries."""
    text = OK + 'parameters:\n  t:\n    - {filter: mlp, value: 1}\n    - {filter: "*", value: 2}\n'
    text += "    - {filter: self_attn, value: 3}\n"
    assert convert(text).params == (P("t", 1, "mlp"), P("t", 2))


def test_residual_weight_is_accepted_and_ignored() -> None:
    text = "merge_method: passthrough\nslices:\n  - sources:\n    - {model: a, layer_range: [0, 2]}\n"
    assert convert(text + "    residual_weight: 0.5\n") == convert(text)


def test_tokenizer_source_and_chat_template() -> None:
    base = "merge_method: linear\nmodels:\n  - model: a\n"
    assert convert(base + "tokenizer_source: union\n").params == (P("tokenizer_source", Sym("union")),)
    assert convert(base + "tokenizer_source: base\n").params == (P("tokenizer_source", Sym("base")),)
    assert convert(base + "tokenizer_source: org/tok\n").params == (P("tokenizer_source", A("org/tok")),)
    assert convert(base + "chat_template: base\n").params == (P("chat_template", "base"),)
    assert convert(base + "chat_template: chatml\nout_dtype: bfloat16\n").params == (
        P("out_dtype", Sym("bfloat16")),
        P("chat_template", "chatml"),
    )


def test_load_from_file_reads_paths_from_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "ties.yml").write_text(TIES)
    t = load_yaml_target(tmp_path / "ties.yml", "out/ties")
    assert t.sources[0].ref.base_dir == os.getcwd() != str(tmp_path)
    assert t.name == "out/ties"


def test_work_dir_option_sets_base_dir() -> None:
    t = yaml_text_to_target("merge_method: linear\nmodels:\n  - model: a\n", "m.yml", "x", work_dir="/p")
    assert t.sources[0].ref == AutoRef("a", "/p")


YAML_ERRORS = [
    (
        "unknown top key",
        OK + "paramters: {t: 1}\n",
        4,
        1,
        "unknown key 'paramters' in the config (did you mean 'parameters'?)",
    ),
    (
        "unknown model key",
        "merge_method: linear\nmodels:\n  - model: a\n    parameter: {w: 1}\n",
        4,
        5,
        "did you mean 'parameters'?",
    ),
    (
        "unknown source key",
        "merge_method: passthrough\nslices:\n  - sources:\n    - model: a\n      layer_rang: [0, 2]\n",
        5,
        7,
        "did you mean 'layer_range'?",
    ),
    (
        "unknown slice key",
        "merge_method: passthrough\nslices:\n  - source:\n    - model: a\n",
        3,
        5,
        "did you mean 'sources'?",
    ),
    (
        "unknown conditional key",
        OK + "parameters:\n  t:\n    - filtr: mlp\n      value: 1\n",
        6,
        7,
        "did you mean 'filter'?",
    ),
    ("missing merge_method", "models:\n  - model: a\n", 1, 1, "no 'merge_method'"),
    ("both models and slices", OK + "slices: []\n", 1, 1, "exactly one of 'models' or 'slices'"),
    ("neither models nor slices", "merge_method: linear\n", 1, 1, "exactly one of 'models' or 'slices'"),
    (
        "layer_range not ints",
        "merge_method: passthrough\nslices:\n  - sources:\n    - model: a\n      layer_range: [a, 2]\n",
        5,
        20,
        "two integers",
    ),
    (
        "layer_range three items",
        "merge_method: passthrough\nslices:\n  - sources:\n    - model: a\n      layer_range: [0, 1, 2]\n",
        5,
        20,
        "two integers",
    ),
    (
        "layer_range reversed",
        "merge_method: passthrough\nslices:\n  - sources:\n    - model: a\n      layer_range: [8, 2]\n",
        5,
        20,
        "0 <= start < end",
    ),
    (
        "layer_range missing",
        "merge_method: passthrough\nslices:\n  - sources:\n    - model: a\n",
        4,
        7,
        "needs 'layer_range'",
    ),
    ("model missing", "merge_method: linear\nmodels:\n  - parameters: {w: 1}\n", 3, 5, "needs 'model'"),
    ("models not a list", "merge_method: linear\nmodels: a\n", 2, 9, "must be a list"),
    ("models and modules", OK + "modules: {}\n", 1, 1, "(models and modules given)"),
    ("yaml syntax", "merge_method: [linear\nmodels: x\n", 2, 7, "YAML syntax error"),
    ("top level not a mapping", "- a\n- b\n", 1, 1, "must be a mapping"),
    ("empty", "", 1, 1, "empty"),
    ("duplicate key", OK + "merge_method: ties\n", 4, 1, "duplicate key 'merge_method'"),
    ("mixed conditional list", OK + "parameters:\n  t: [1, {value: 2}]\n", 5, 6, "mixes conditionals"),
    ("conditional without value", OK + "parameters:\n  t: {filter: mlp}\n", 5, 6, "has no 'value'"),
    ("bad explicit tag", OK + "parameters:\n  t: !!int x\n", 5, 6, "bad value for parameter 't'"),
    ("null parameter", OK + "parameters:\n  t:\n", 5, 5, "has no value"),
]


@pytest.mark.parametrize(
    ("text", "line", "column", "message"), [c[1:] for c in YAML_ERRORS], ids=[c[0] for c in YAML_ERRORS]
)
def test_yaml_errors(text: str, line: int, column: int, message: str) -> None:
    with pytest.raises(UserError) as info:
        convert(text)
    err = info.value
    assert isinstance(err, (ConfigError, MergefileSyntaxError))
    assert err.loc is not None and err.loc.file == "cfg/merge.yml", str(err)
    assert (err.loc.line, err.loc.column) == (line, column), str(err)
    assert message in str(err), str(err)


def test_missing_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read YAML config"):
        load_yaml_target(tmp_path / "nope.yml", "x")
