"""Bad Mergefiles, one row each: every error is located, worded, and free of Lark internals."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mergefile.errors import ConfigError, MergefileSyntaxError, UserError
from mergefile.syntax import parse_mergefile, parse_text


@dataclass(frozen=True)
class Bad:
    """A bad recipe: ``text`` is the Mergefile; ``files`` are extra files beside it."""

    id: str
    text: str
    line: int
    column: int
    message: str
    files: dict[str, str] = field(default_factory=dict)
    file: str = "Mergefile"  # where the error is expected
    kind: type[UserError] = MergefileSyntaxError


YAML_OK = "merge_method: linear\nmodels:\n  - model: a\n"

CASES = [
    Bad("missing colon", "out/x ties {\n  m weight=1\n}\n", 1, 7, "expected ':' after target name"),
    Bad("unclosed brace", 'model m = "m"\nout/x: ties {\n  m weight=1\n', 2, 13, "unclosed '{' opened at line 2"),
    Bad(
        "unclosed brace before next target",
        "out/a: ties {\n  m weight=1\n\nout/b: linear { m weight=1 }\n",
        4,
        6,
        "'{' opened at line 1 is not closed",
    ),
    Bad("unclosed list at eof", "w = [0.1, 0.2\n", 1, 5, "unclosed '[' opened at line 1"),
    Bad("unclosed list then statement", 'w = [0.1, 0.2\nmodel x = "a"\n', 2, 1, "'[' opened at line 1 is not closed"),
    Bad("unclosed paren", "out/a: ties(base=b\n", 1, 12, "unclosed '(' opened at line 1"),
    Bad("unterminated string", 'model x = "./models/x\n', 1, 11, "unterminated string"),
    Bad("bad number", "w = 1.2.3\n", 1, 5, "bad number '1.2.3'"),
    Bad("bad number suffix", "out/a: ties { m weight=0.5x }\n", 1, 24, "bad number '0.5x'"),
    Bad("misspelled model", 'modle base = hf("org/x")\n', 1, 1, "did you mean 'model'?"),
    Bad("misspelled include", 'inclde "common.mf"\n', 1, 1, "did you mean 'include'?"),
    Bad("misspelled slice", "out/a: passthrough {\n  slcie m[0:4]\n}\n", 2, 11, "did you mean 'slice'?"),
    Bad("model without =", 'model base hf("org/x")\n', 1, 12, "expected '='"),
    Bad("model with a number", "model base = 3\n", 1, 14, "expected a quoted string or hf(...)"),
    Bad("hf without repo", 'model base = hf(revision="main")\n', 1, 17, "hf() needs the repo id as a quoted string"),
    Bad("hf empty", "model base = hf()\n", 1, 17, "hf() needs the repo id"),
    Bad(
        "hf unknown kwarg", 'model base = hf("a/b", rev="x")\n', 1, 24, "unknown hf() argument 'rev'", kind=ConfigError
    ),
    Bad("slice without range", "out/a: passthrough {\n  slice math\n}\n", 2, 13, "a slice source needs a layer range"),
    Bad(
        "slice block source without range",
        "out/a: passthrough {\n  slice {\n    math weight=1\n  }\n}\n",
        3,
        10,
        "needs a layer range",
    ),
    Bad(
        "range with names", "out/a: passthrough {\n  slice math[a:b]\n}\n", 2, 13, "must be integers", kind=ConfigError
    ),
    Bad("range with float", "out/a: passthrough { slice m[0.5:4] }\n", 1, 29, "must be integers", kind=ConfigError),
    Bad(
        "range end before start",
        "out/a: passthrough { slice m[8:4] }\n",
        1,
        29,
        "end must be greater",
        kind=ConfigError,
    ),
    Bad(
        "range end equals start",
        "out/a: passthrough { slice m[4:4] }\n",
        1,
        29,
        "end must be greater",
        kind=ConfigError,
    ),
    Bad("negative range", "out/a: passthrough { slice m[-2:4] }\n", 1, 29, "must be >= 0", kind=ConfigError),
    Bad(
        "duplicate target",
        "out/a: linear { m weight=1 }\nout/a: ties { m weight=1 }\n",
        2,
        1,
        "duplicate target 'out/a' (first defined at line 1)",
        kind=ConfigError,
    ),
    Bad("duplicate phony", "all: a\nall: b\n", 2, 1, "duplicate target 'all'", kind=ConfigError),
    Bad(
        "duplicate model",
        'model m = "a"\nmodel m = "b"\n',
        2,
        7,
        "duplicate model 'm' (first defined at line 1)",
        kind=ConfigError,
    ),
    Bad(
        "model and target share a name",
        'model m = "a"\nm: linear { x weight=1 }\n',
        2,
        1,
        "same name as a model",
        kind=ConfigError,
    ),
    Bad(
        "duplicate block param",
        "out/a: ties {\n  normalize = true\n  normalize = false\n}\n",
        3,
        3,
        "duplicate parameter 'normalize'",
        kind=ConfigError,
    ),
    Bad(
        "duplicate filtered param",
        "out/a: ties {\n  weight[mlp] = 1\n  weight[mlp] = 2\n}\n",
        3,
        3,
        "duplicate parameter 'weight[mlp]'",
        kind=ConfigError,
    ),
    Bad(
        "duplicate source param",
        "out/a: ties { m weight=1 weight=2 }\n",
        1,
        26,
        "first set at line 1",
        kind=ConfigError,
    ),
    Bad("duplicate call kwarg", "out/a: ties(base=a, base=b)\n", 1, 21, "duplicate parameter 'base'", kind=ConfigError),
    Bad("include missing file", 'include "nope.mf"\n', 1, 1, "cannot read include file", kind=ConfigError),
    Bad(
        "include cycle",
        'include "a.mf"\n',
        1,
        1,
        "include cycle: ",
        files={"a.mf": 'include "b.mf"\n', "b.mf": 'include "a.mf"\n'},
        file="b.mf",
        kind=ConfigError,
    ),
    Bad("include self", 'x = 1\ninclude "Mergefile"\n', 2, 1, "include cycle", kind=ConfigError),
    Bad(
        "include yaml without as",
        'include "m.yml"\n',
        1,
        1,
        "must be included as a target",
        files={"m.yml": YAML_OK},
        kind=ConfigError,
    ),
    Bad(
        "include as with non-yaml",
        'include "c.mf" as out/x\n',
        1,
        1,
        "imports a mergekit YAML",
        files={"c.mf": ""},
        kind=ConfigError,
    ),
    Bad(
        "error inside included file",
        'include "c.mf"\n',
        2,
        5,
        "expected a value",
        files={"c.mf": "x = 1\ny = \n"},
        file="c.mf",
    ),
    Bad("stray closing brace", "x = 1\n}\n", 2, 1, "unmatched '}'"),
    Bad("mismatched bracket", "w = [1, 2}\n", 1, 10, "'}' does not match '[' opened at line 1"),
    Bad("= with no value", "x =\n", 1, 4, "expected a value (number, string, name, list or hf(...))"),
    Bad("block param with no value", "out/a: ties {\n  normalize =\n}\n", 2, 14, "expected a value"),
    Bad("empty filter", "out/a: ties { weight[] = 1 }\n", 1, 21, "empty '[]'"),
    Bad("empty quoted filter", 'out/a: ties { weight[""] = 1 }\n', 1, 22, "empty filter"),
    Bad("phony with number", "all: out/a 3\n", 1, 12, "unexpected number 3"),
    Bad("phony with commas", "all: out/a, out/b\n", 1, 11, "separate names with spaces"),
    Bad("quoted group name", '"g": out/a out/b\n', 1, 12, "unexpected name 'out/b'; expected '(' or '{'"),
    Bad("nothing after colon", "out/a:\n", 1, 7, "expected a name"),
    Bad("two blocks", "out/a: ties { m weight=1 } { n weight=1 }\n", 1, 28, "a target has only one block"),
    Bad("block on next line", "out/a: ties(base=b)\n{\n  m weight=1\n}\n", 2, 1, "same line as its target"),
    Bad("semicolon in call", "out/a: ties(base=b; normalize=true)\n", 1, 19, "use ',' between items"),
    Bad("semicolon as a value", "x = ;\n", 1, 5, "unexpected ';'; expected a value"),
    Bad("semicolon in list", "w = [1; 2]\n", 1, 7, "use ',' between items"),
    Bad("garbage character", "w = @x\n", 1, 5, "unexpected character '@'"),
    Bad("garbage in block", "out/a: ties {\n  m weight=1 $\n}\n", 2, 14, "unexpected character '$'"),
    Bad("two values", "x = 1 2\n", 1, 7, "expected end of line"),
    Bad("param without =", "out/a: ties { m weight }\n", 1, 24, "expected '=' or '['"),
    Bad("unknown escape", 'w = "a\\qb"\n', 1, 7, "unknown escape"),
    Bad(
        "positional after keyword",
        "out/a: evolve(base=b, ties)\n",
        1,
        14,
        "positional argument after keyword",
        kind=ConfigError,
    ),
    Bad(
        "sources and slices mixed",
        "out/a: passthrough {\n  m weight=1\n  slice m[0:4]\n}\n",
        3,
        3,
        "mixes source lines and slices",
        kind=ConfigError,
    ),
    Bad("include path unquoted", "include common.mf\n", 1, 9, "expected a quoted string"),
    Bad(
        "yaml import unknown key",
        'include "m.yml" as out/x\n',
        4,
        1,
        "unknown key 'paramters'",
        files={"m.yml": YAML_OK + "paramters:\n  t: 0.5\n"},
        file="m.yml",
        kind=ConfigError,
    ),
    Bad(
        "yaml import syntax error",
        'include "m.yml" as out/x\n',
        3,
        13,
        "YAML syntax error",
        files={"m.yml": "models:\n  - a: [1, 2\nmerge_method: x\n"},
        file="m.yml",
    ),
    Bad(
        "yaml import missing file", 'include "nope.yaml" as out/x\n', 1, 1, "cannot read include file", kind=ConfigError
    ),
]

_LARK_NAMES = re.compile(r"\b(_NL|\$END|RSQB|LSQB|RBRACE|LBRACE|RPAR|LPAR|COLON|EQUAL|COMMA|NAME|NUMBER|STRING)\b")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_mergefile(case: Bad, tmp_path: Path) -> None:
    for name, text in case.files.items():
        (tmp_path / name).write_text(text)
    main = tmp_path / "Mergefile"
    main.write_text(case.text)
    with pytest.raises(UserError) as info:
        parse_mergefile(main)
    err = info.value
    assert isinstance(err, case.kind), f"{type(err).__name__}: {err}"
    assert err.loc is not None, str(err)
    assert Path(err.loc.file).name == case.file, str(err)
    assert (err.loc.line, err.loc.column) == (case.line, case.column), str(err)
    assert case.message in str(err), str(err)
    assert not _LARK_NAMES.search(str(err)), f"Lark internals in: {err}"
    assert "Traceback" not in str(err) and "Token(" not in str(err)


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 25


def test_error_message_shape() -> None:
    """file:line:col, the offending text, what was expected."""
    with pytest.raises(MergefileSyntaxError) as info:
        parse_text("out/a: ties {\n  m weight=\n}\n", "recipes/M")
    assert str(info.value) == (
        "recipes/M:2:12: unexpected end of line; expected a value (number, string, name, list or hf(...))"
    )


def test_missing_root_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read Mergefile"):
        parse_mergefile(tmp_path / "absent")


def test_duplicate_across_include_names_the_other_file(tmp_path: Path) -> None:
    (tmp_path / "c.mf").write_text('model m = "a"\n')
    (tmp_path / "Mergefile").write_text('include "c.mf"\nmodel m = "b"\n')
    with pytest.raises(ConfigError) as info:
        parse_mergefile(tmp_path / "Mergefile")
    assert "first defined at " in str(info.value) and "c.mf:1:7" in str(info.value)


def test_no_false_keyword_hint_for_definitions() -> None:
    """``model1 = [1,, 2]`` is an assignment with a bad list, not a misspelled 'model'."""
    with pytest.raises(MergefileSyntaxError) as info:
        parse_text("model1 = [1,, 2]\n")
    assert "did you mean" not in str(info.value)


def test_binary_and_bom_files(tmp_path: Path) -> None:
    (tmp_path / "bin").write_bytes(b"x = \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        parse_mergefile(tmp_path / "bin")
    (tmp_path / "bom").write_bytes("\ufeffx = 1\n".encode())
    assert parse_mergefile(tmp_path / "bom").assigns()["x"].value == 1
