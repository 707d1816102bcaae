"""Grammar additions for mergekit parity: ``module`` blocks and ``model m = BASE + LORA``."""

from __future__ import annotations

import os

import pytest

from mergefile.errors import ConfigError, MergefileSyntaxError
from mergefile.syntax import HfRef, Module, Param, PathRef, Slice, Source, Sym, parse_text, yaml_text_to_target


def test_lora_declarations():
    mf = parse_text('model a = "./a" + hf("org/l", revision="v1")\nmodel b = hf("org/b") + "./l"\n', "F")
    assert mf.models()["a"].ref == PathRef("./a", None, HfRef("org/l", "v1"))
    assert mf.models()["b"].ref == HfRef("org/b", None, None, PathRef("./l"))


def test_yaml_lora_references_parse_fully():
    t = yaml_text_to_target("merge_method: linear\nmodels:\n  - model: org/x@r1+org/l@r2\n", "d/m.yml", "out/x")
    ref = t.sources[0].ref
    assert (ref.text, ref.base_dir, ref.lora.text) == ("org/x@r1", os.getcwd(), "org/l@r2")  # mergekit's rule


def test_modules():
    mf = parse_text(
        'out/x: linear {\n  module text { a weight=1 ; t = 1 }\n  module "v t" {\n    slice a[0:2]\n  }\n}\n', "F"
    )
    assert mf.targets()["out/x"].modules == (
        Module("text", sources=(Source(Sym("a"), None, (Param("weight", 1),)),), params=(Param("t", 1),)),
        Module("v t", slices=(Slice((Source(Sym("a"), (0, 2)),)),)),
    )


def test_yaml_modules_match_the_mergefile():
    text = """\
merge_method: linear
modules:
  text:
    models: [{model: a, parameters: {weight: 1}}]
    parameters: {normalize: true}
"""
    t = yaml_text_to_target(text, "m.yml", "out/x")
    assert t.modules[0].name == "text" and t.modules[0].params == (Param("normalize", True),)
    assert t.modules[0].sources[0].params == (Param("weight", 1),)


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        ("out/x: linear {\n  a weight=1\n  module m { a weight=1 }\n}\n", ConfigError, "mixes 'module' blocks"),
        (
            "out/x: linear {\n  module m { a weight=1 }\n  module m { a weight=1 }\n}\n",
            ConfigError,
            "duplicate module 'm'",
        ),
        ("out/x: linear {\n  module m { t = 1 }\n}\n", ConfigError, "module 'm' has no sources or slices"),
        (
            "out/x: linear {\n  module m { a weight=1 ; slice a[0:1] }\n}\n",
            ConfigError,
            "mixes source lines and slices",
        ),
        ('model a = "./a" + "./l" + "./m"\n', MergefileSyntaxError, r"unexpected '\+'; expected end of line"),
        ("out/x: linear {\n  modul m { a weight=1 }\n}\n", MergefileSyntaxError, "did you mean 'module'?"),
    ],
)
def test_errors(text: str, error: type, message: str):
    with pytest.raises(error, match=message):
        parse_text(text, "F")
