"""``override_architecture``: mergekit's dict form in YAML, ``(architecture="X")`` on a Mergefile
model declaration; both read into the reference, survive import and export, and are checked."""

from __future__ import annotations

import pytest

from mergefile.errors import ConfigError
from mergefile.syntax import AutoRef, HfRef, PathRef, parse_text, yaml_text_to_target
from mergefile.syntax.convert import yaml_to_mergefile
from mergefile.syntax.render_mergefile import render_mergefile
from mergefile.syntax.render_yaml import render_yaml

YAML = """\
merge_method: linear
models:
  - model: {model: {path: ./a}, override_architecture: LlavaForConditionalGeneration}
  - model: {model: org/b@v1, lora: ./l, override_architecture: T5ForConditionalGeneration}
"""


def test_yaml_dict_form_reads_the_class():
    t = yaml_text_to_target(YAML, "d/m.yml", "out/x")
    a, b = (s.ref for s in t.sources)
    assert isinstance(a, AutoRef) and (a.text, a.architecture) == ("./a", "LlavaForConditionalGeneration")
    assert (b.text, b.lora.text, b.architecture) == ("org/b@v1", "./l", "T5ForConditionalGeneration")
    assert b.lora.architecture is None


def test_mergefile_declaration_option():
    mf = parse_text(
        'model a = "./a" (architecture="LlavaForConditionalGeneration")\n'
        'model b = hf("org/b", revision="v1") + "./l" (architecture="T5ForConditionalGeneration")\n',
        "F",
    )
    assert mf.models()["a"].ref == PathRef("./a", architecture="LlavaForConditionalGeneration")
    assert mf.models()["b"].ref == HfRef("org/b", "v1", lora=PathRef("./l"), architecture="T5ForConditionalGeneration")
    assert parse_text(render_mergefile(mf), "F").statements == mf.statements


def test_import_and_export_round_trip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # mergekit paths are read from the working directory
    (tmp_path / "a").mkdir()
    t = yaml_text_to_target(YAML, str(tmp_path / "m.yml"), "out/x")
    mf = yaml_to_mergefile((t,), str(tmp_path / "Mergefile"))
    text = render_mergefile(mf)
    assert 'model a = "a" (architecture="LlavaForConditionalGeneration")' in text
    assert 'model b-l = hf("org/b", revision="v1") + "l" (architecture="T5ForConditionalGeneration")' in text
    parsed = parse_text(text, str(tmp_path / "Mergefile"))
    exported = render_yaml(parsed, "out/x", str(tmp_path))
    assert "override_architecture: LlavaForConditionalGeneration" in exported
    again = yaml_to_mergefile(
        (yaml_text_to_target(exported, str(tmp_path / "e.yml"), "out/x"),), str(tmp_path / "Mergefile")
    )
    assert parse_text(render_mergefile(again), str(tmp_path / "Mergefile")).statements == parsed.statements


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'model a = "./a" (architectur="X")\n',
            r"unknown model option 'architectur' \(did you mean 'architecture'\?\)",
        ),
        (
            'model a = "./a" (revision="X")\n',
            r"unknown model option 'revision' \(a model takes only architecture=...\)",
        ),
        ('model a = "./a" ("X")\n', "takes only architecture="),
        ('model a = "./a" (architecture=3)\n', "architecture must be a quoted class name"),
        ('model a = "./a" (architecture="X", architecture="Y")\n', "duplicate parameter 'architecture'"),
    ],
)
def test_bad_options(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_text(text, "F")


def test_inline_reference_cannot_carry_a_class():
    mf = parse_text('out/x: linear { "./a" weight=1 }\n', "F")
    t = mf.targets()["out/x"]
    src = t.sources[0]
    from dataclasses import replace

    bad = replace(mf, statements=(replace(t, sources=(replace(src, ref=replace(src.ref, architecture="X")),)),))
    with pytest.raises(ValueError, match="must be declared"):
        render_mergefile(bad)
