"""mergekit YAML through the CLI: every bad config is a located error and exit code 2.

What mergekit ignores (unknown keys, parameters a method does not use) warns once and is
dropped; what mergekit's schema coerces is coerced; a likely typo of a key or parameter that is
used stops with ``file:line:col`` and a "did you mean" (``--lenient`` makes it a warning too).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import cli

LIN = "merge_method: linear\nmodels:\n  - model: m1\n    parameters: {weight: 1}\n"
SRC = "merge_method: passthrough\nslices:\n  - sources:\n      - model: m1\n        layer_range: "
TOK = LIN + 'tokenizer:\n  tokens:\n    "<x>":\n'
MULTI = "name: one\nmerge_method: linear\nmodels: [{model: m1, parameters: {weight: 1}}]\n---\n"

# (id, YAML text, line, column, message)
ERRORS = [
    # unknown or misspelled keys, at every level
    (
        "top key",
        LIN + "paramters: {normalize: true}\n",
        5,
        1,
        "unknown key 'paramters' in the config (did you mean 'parameters'?)",
    ),
    (
        "models entry key",
        "merge_method: linear\nmodels:\n  - model: m1\n    parameter: {weight: 1}\n",
        4,
        5,
        "unknown key 'parameter' in a models entry (did you mean 'parameters'?)",
    ),
    (
        "slice key",
        "merge_method: passthrough\nslices:\n  - source:\n      - model: m1\n",
        3,
        5,
        "unknown key 'source' in a slice (did you mean 'sources'?)",
    ),
    ("slice source key", SRC + "[0, 1]\n        parameter: {scale: 1}\n", 6, 9, "did you mean 'parameters'?"),
    (
        "conditional key",
        LIN + "parameters:\n  normalize:\n    - filtr: mlp\n      value: true\n",
        7,
        7,
        "unknown key 'filtr' in a conditional value of 'normalize' (did you mean 'filter'?)",
    ),
    (
        "tokenizer key",
        LIN + "tokenizer:\n  pad_to_multipel_of: 8\n",
        6,
        3,
        "unknown key 'pad_to_multipel_of' in the tokenizer block (did you mean 'pad_to_multiple_of'?)",
    ),
    ("token key", TOK + "      forced: true\n", 8, 7, "unknown key 'forced' in token '<x>' (did you mean 'force'?)"),
    (
        "token source key",
        TOK + "      source: {kind: model_token, modle: m1, token: a}\n",
        8,
        35,
        "unknown key 'modle' in a token source (did you mean 'model'?)",
    ),
    (
        "module key",
        "merge_method: linear\nmodules:\n  text:\n    model: [{model: m1}]\n",
        4,
        5,
        "unknown key 'model' in module 'text' (did you mean 'models'?)",
    ),
    (
        "reference dict key",
        "merge_method: linear\nmodels:\n  - model: {model: {path: m1, revison: r}}\n",
        3,
        31,
        "unknown key 'revison' in the model path (did you mean 'revision'?)",
    ),
    (
        "parameter name",
        LIN.replace("{weight: 1}", "{weigth: 1}"),
        4,
        18,
        "unknown parameter 'weigth' for linear (did you mean 'weight'?)",
    ),
    ("merge method", LIN.replace("linear", "lineer"), 1, 15, "unknown merge method 'lineer' (did you mean 'linear'?)"),
    # wrong types
    (
        "string for a number",
        LIN.replace("{weight: 1}", "{weight: abc}"),
        4,
        18,
        "parameter 'weight' of linear must be a number, got 'abc'",
    ),
    ("word for a number", LIN.replace("{weight: 1}", "{weight: 'half'}"), 4, 18, "must be a number, got 'half'"),
    (
        "strings as a gradient",
        LIN.replace("{weight: 1}", "{weight: [0.1, high]}"),
        4,
        32,
        "gradient 'weight' must be a list of numbers, got 'high'",
    ),
    (
        "nested gradient",
        LIN.replace("{weight: 1}", "{weight: [[0, 1]]}"),
        4,
        27,
        "an element of 'weight' must be a single value",
    ),
    (
        "number for a boolean",
        LIN + "parameters: {normalize: 2}\n",
        5,
        14,
        "parameter 'normalize' of linear must be true or false, got 2",
    ),
    (
        "float for an integer",
        "merge_method: karcher\nmodels: [{model: m1}, {model: m2}]\nparameters: {max_iter: 2.5}\n",
        3,
        14,
        "parameter 'max_iter' of karcher must be an integer, got 2.5",
    ),
    ("dtype not a string", LIN + "dtype: 16\n", 5, 8, "dtype must be a non-empty string, got 16"),
    ("models not a list", "merge_method: linear\nmodels: m1\n", 2, 9, "models must be a list"),
    ("parameters not a mapping", LIN + "parameters: [1]\n", 5, 13, "parameters of the config must be a mapping"),
    ("seed not an integer", LIN + "seed: 1.5\n", 5, 7, "seed must be an integer >= 0, got 1.5"),
    (
        "pad not positive",
        LIN + "tokenizer: {pad_to_multiple_of: 0}\n",
        5,
        33,
        "pad_to_multiple_of must be an integer >= 1, got 0",
    ),
    ("force not a boolean", TOK + "      force: sure\n", 8, 14, "force must be true or false, got 'sure'"),
    (
        "residual_weight not a number",
        SRC + "[0, 1]\n    residual_weight: x\n",
        6,
        22,
        "residual_weight must be a number",
    ),
    ("infinite value", LIN.replace("{weight: 1}", "{weight: .inf}"), 4, 26, "must be a finite number"),
    (
        "token_id not an integer",
        TOK + "      source: {kind: model_token, model: m1, token_id: x}\n",
        8,
        56,
        "token_id must be an integer >= 0, got 'x'",
    ),
    (
        "model_token without token",
        TOK + "      source: {kind: model_token, model: m1}\n",
        8,
        15,
        "kind: model_token needs 'model' and one of 'token' or 'token_id'",
    ),
    ("unknown token kind", TOK + "      source: {kind: random}\n", 8, 22, "unknown token source kind 'random'"),
    (
        "tokenizer_source and tokenizer",
        LIN + "tokenizer_source: base\ntokenizer: {source: base}\n",
        6,
        1,
        "'tokenizer_source' and 'tokenizer' cannot both be set",
    ),
    # bad layer ranges
    ("layer range reversed", SRC + "[3, 1]\n", 5, 22, "layer_range [3, 1] is empty or negative: need 0 <= start < end"),
    ("layer range negative", SRC + "[-1, 2]\n", 5, 22, "need 0 <= start < end"),
    (
        "layer range three items",
        SRC + "[0, 1, 2]\n",
        5,
        22,
        "layer_range must be two integers [start, end], got [0, 1, 2]",
    ),
    ("layer range floats", SRC + "[0, 2.5]\n", 5, 22, "layer_range must be two integers"),
    ("layer range not a list", SRC + "0-4\n", 5, 22, "layer_range must be a list"),
    (
        "layer range missing",
        "merge_method: passthrough\nslices:\n  - sources:\n      - model: m1\n",
        4,
        9,
        "a slice source needs 'layer_range'",
    ),
    # bad model references
    (
        "two revisions",
        "merge_method: linear\nmodels:\n  - model: org/x@a@b\n",
        3,
        12,
        "bad model reference 'org/x@a@b': more than one '@revision' in the model part",
    ),
    (
        "two loras",
        "merge_method: linear\nmodels:\n  - model: a+b+c\n",
        3,
        12,
        "bad model reference 'a+b+c': more than one '+lora'",
    ),
    ("empty path", "merge_method: linear\nmodels:\n  - model: '@main'\n", 3, 12, "the model path is empty"),
    (
        "empty revision",
        "merge_method: linear\nmodels:\n  - model: org/x@\n",
        3,
        12,
        "empty revision after '@' in the model part",
    ),
    ("empty lora", "merge_method: linear\nmodels:\n  - model: org/x+\n", 3, 12, "the LoRA path is empty"),
    (
        "lora with two revisions",
        "merge_method: linear\nmodels:\n  - model: org/x+org/l@a@b\n",
        3,
        12,
        "more than one '@revision' in the LoRA part",
    ),
    (
        "number as a model",
        "merge_method: linear\nmodels:\n  - model: 3\n",
        3,
        12,
        "model must be a non-empty string, got 3",
    ),
    (
        "override_architecture not a string",
        "merge_method: linear\nmodels:\n  - model: {model: m1, override_architecture: 3}\n",
        3,
        47,
        "override_architecture must be a non-empty string, got 3",
    ),
    # multi-document files
    (
        "unnamed middle document",
        "merge_method: linear\nmodels: [{model: m1}]\n---\n" + LIN,
        1,
        1,
        "every document but the last needs a 'name:'",
    ),
    ("duplicate stage", MULTI + MULTI + LIN, 5, 7, "duplicate stage name 'one'"),
    (
        "stage with a revision",
        MULTI + "merge_method: linear\nmodels: [{model: one@main}]\n",
        6,
        18,
        "'one' names an earlier stage of this file; it takes no '@revision' or '+lora'",
    ),
    ("stage named like the target", "name: x\n" + LIN + "---\n" + LIN, 1, 7, "stage 'x' would be built at 'out/x'"),
    ("yaml syntax", "merge_method: [linear\nmodels: x\n", 2, 7, "YAML syntax error"),
]


@pytest.mark.parametrize(("text", "line", "column", "message"), [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_bad_config_is_a_located_error_with_exit_2(tmp_path: Path, capsys, text, line, column, message):
    (tmp_path / "m.yml").write_text(text)
    assert cli(tmp_path, "-n", "--config", "m.yml", "out/x") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mergebuild: error: m.yml:{line}:{column}: "), err
    assert message in err, err
    assert "Traceback" not in err


def test_errors_found_while_planning_are_located_too(tiny_models, tmp_path: Path, capsys):
    """Beyond the model's layers, and slices of different lengths: the planner knows the model."""
    models = tmp_path / "models"
    models.symlink_to(Path(tiny_models["a"]).parent, target_is_directory=True)
    (tmp_path / "m.yml").write_text(SRC.replace("m1", "models/a") + "[0, 9]\n")
    assert cli(tmp_path, "-n", "--config", "m.yml", "out/x") == 2
    assert "layer range [0:9] is beyond model" in capsys.readouterr().err
    text = "merge_method: linear\nslices:\n  - sources:\n      - {model: models/a, layer_range: [0, 2]}\n"
    (tmp_path / "m.yml").write_text(text + "      - {model: models/b, layer_range: [0, 3]}\n")
    assert cli(tmp_path, "-n", "--config", "m.yml", "out/x") == 2
    assert "m.yml:3:5: all sources of a slice must span the same number of layers" in capsys.readouterr().err


def test_ignored_keys_warn_typos_stop_and_lenient_lets_typos_through(tiny_models, tmp_path: Path, capsys):
    (tmp_path / "models").symlink_to(Path(tiny_models["a"]).parent, target_is_directory=True)
    text = (
        "merge_method: linear\nmodels:\n  - model: models/a\n    parameters: {weight: 1, weigth: 2}\n"
        "    paramters: {weight: 3}\n  - model: models/b\n    parameters: {weight: 1}\nfoo: 1\n"
    )
    (tmp_path / "m.yml").write_text(text)
    assert cli(tmp_path, "-n", "--config", "m.yml", "out/x") == 2
    err = capsys.readouterr().err
    assert "error: m.yml:5:5: unknown key 'paramters' in a models entry (did you mean 'parameters'?)" in err
    assert cli(tmp_path, "-n", "--lenient", "--config", "m.yml", "out/x", cache=tmp_path / "cache") == 0
    err = capsys.readouterr().err
    assert "warning: m.yml:8:1: unknown key 'foo' in the config, ignored as mergekit ignores it" in err
    assert "warning: m.yml:5:5: unknown key 'paramters' in a models entry (did you mean 'parameters'?)" in err
    assert "warning: m.yml:4:29: unknown parameter 'weigth' for linear (did you mean 'weight'?); ignored" in err


IGNORED = [  # (YAML, the warning) -- keys mergekit ignores, seen in public configs
    (
        SRC.replace("m1", "models/a") + "[0, 2]\n        revision: main\n",
        "unknown key 'revision' in a slice source, ignored as mergekit ignores it (to pin a revision, write it in"
        " the model string: model: org/name@REVISION)",
    ),
    (
        LIN.replace("m1", "models/a") + "parameters: {dtype: bfloat16}\n",
        "parameter 'dtype' ignored as mergekit ignores it ('dtype' is a top-level key of the config",
    ),
    (
        "merge_method: model_stock\nbase_model: models/base\nmodels:\n  - model: models/a\n    parameters: {weight: 1}\n"
        "  - model: models/b\n",
        "parameter 'weight' ignored as mergekit ignores it (model_stock does not use it",
    ),
    (
        "merge_method: sce\nbase_model: models/base\nmodels: [{model: models/a}, {model: models/b}]\n"
        "select_topk: 0.5\nparameters: {normalize: true}\n",
        "unknown key 'select_topk' in the config, ignored as mergekit ignores it (it is a parameter of sce: put it"
        " under 'parameters:')",
    ),
    (
        "merge_method: multislerp\nmodels: [{model: models/a}, {model: models/b}]\nparameters: {normalize: true, weight: 1}\n",
        "parameter 'normalize' ignored as mergekit ignores it (multislerp does not use it",
    ),
]


@pytest.mark.parametrize(("text", "warning"), IGNORED)
def test_keys_mergekit_ignores_warn_once_and_build(tiny_models, tmp_path: Path, capsys, text, warning):
    (tmp_path / "models").symlink_to(Path(tiny_models["a"]).parent, target_is_directory=True)
    (tmp_path / "m.yml").write_text(text)
    assert cli(tmp_path, "-n", "--config", "m.yml", "out/x", cache=tmp_path / "cache") == 0
    err = capsys.readouterr().err
    assert err.count(warning) == 1, err


def test_an_ignored_key_warns_once_per_file(tmp_path: Path):
    from mergefile.syntax import yaml_text_to_targets

    seen: list[str] = []
    doc = "merge_method: linear\nmodels:\n  - model: a\n    int_space: 1\n  - model: b\n    int_space: 2\n"
    yaml_text_to_targets("name: s\n" + doc + "---\n" + doc, "m.yml", "out/x", warn=seen.append)
    assert len(seen) == 1 and "m.yml:5:5: unknown key 'int_space' in a models entry" in seen[0]


def test_lenient_reaches_included_yaml(tiny_models, tmp_path: Path, capsys):
    (tmp_path / "models").symlink_to(Path(tiny_models["a"]).parent, target_is_directory=True)
    (tmp_path / "m.yml").write_text(LIN.replace("m1", "models/a") + "parameterz: 1\n")
    (tmp_path / "Mergefile").write_text('include "m.yml" as out/x\n')
    assert cli(tmp_path, "-n") == 2
    assert "m.yml:5:1: unknown key 'parameterz'" in capsys.readouterr().err
    assert cli(tmp_path, "-n", "--lenient", cache=tmp_path / "cache") == 0
    assert "warning: " in capsys.readouterr().err


def test_a_density_above_one_warns_and_keeps_every_entry(tiny_models, tmp_path: Path, capsys):
    (tmp_path / "models").symlink_to(Path(tiny_models["a"]).parent, target_is_directory=True)
    ties = (
        "merge_method: ties\nbase_model: models/base\ndtype: float32\nmodels:\n"
        "  - model: models/a\n    parameters: {weight: 1, density: DA}\n"
    )
    cache = tmp_path / "cache"
    (tmp_path / "m.yml").write_text(ties.replace("DA", "5"))
    assert cli(tmp_path, "--config", "m.yml", "out/five", cache=cache) == 0
    err = capsys.readouterr().err
    assert err.count("m.yml:6:29: density 5 is above 1; it keeps every entry") == 1, err
    (tmp_path / "m.yml").write_text(ties.replace("DA", "1"))
    assert cli(tmp_path, "--config", "m.yml", "out/one", cache=cache) == 0
    assert "above 1" not in capsys.readouterr().err
    from tests.helpers import read_tensors

    five, one = read_tensors(tmp_path / "out/five"), read_tensors(tmp_path / "out/one")
    assert all(five[k].equal(one[k]) for k in one)
