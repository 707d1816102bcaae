"""Every Mergefile construct parses to the exact AST (locations are excluded from equality)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergefile.errors import Loc
from mergefile.syntax import (
    Assign,
    AutoRef,
    HfRef,
    Include,
    Mergefile,
    ModelDecl,
    Param,
    PathRef,
    Phony,
    Slice,
    Source,
    Sym,
    Target,
    parse_mergefile,
    parse_text,
)

DATA = Path(__file__).parent / "data"


def one(text: str):
    """The single statement of ``text``."""
    (st,) = parse_text(text).statements
    return st


def P(name: str, value, filter: str | None = None) -> Param:  # noqa: A002 - mirrors the field
    return Param(name, value, filter)


# ---- the example from the language brief ---------------------------------------------------


def test_example_mergefile() -> None:
    mf = parse_mergefile(DATA / "example.mf")
    s = mf.statements
    assert s[0] == ModelDecl("code", HfRef("org/code-mistral"))  # from common.mf
    assert s[1] == Target(
        "out/x",
        "linear",
        params=(P("dtype", Sym("float16")),),
        sources=(
            Source(AutoRef("./models/a", str(DATA)), None, (P("weight", 0.5),)),
            Source(AutoRef("org/b", str(DATA)), None, (P("weight", 0.5),)),
        ),
    )
    assert s[2:5] == (Assign("dtype", Sym("bfloat16")), Assign("seed", 42), Assign("w_math", 0.6))
    assert s[5] == ModelDecl("base", HfRef("mistralai/Mistral-7B-v0.1", "main"))
    assert s[6] == ModelDecl("math", PathRef("./models/mistral-math"))
    assert len(s) == 13
    assert mf.targets()["out/math-code"] == Target(
        name="out/math-code",
        method="ties",
        params=(
            P("base", Sym("base")),
            P("normalize", True),
            P("weight", (0.2, 0.8), "self_attn"),
            P("normalize", True),
            P("tokenizer", Sym("union")),
        ),
        sources=(
            Source(Sym("math"), None, (P("weight", Sym("w_math")), P("density", 0.5))),
            Source(Sym("code"), None, (P("weight", 0.4), P("density", 0.5), P("weight", 0.1, "mlp"))),
            Source(PathRef("./models/other"), None, (P("weight", 0.2),)),
            Source(HfRef("org/x", "abc"), None, (P("weight", 0.1),)),
        ),
    )
    assert mf.targets()["out/final"] == Target(
        "out/final",
        "slerp",
        params=(P("base", Sym("out/math-code")),),
        sources=(Source(PathRef("./models/chat"), None, (P("t", (0, 0.5, 0.3, 0.7, 1)),)),),
    )
    assert mf.targets()["out/frank"] == Target(
        "out/frank",
        "passthrough",
        slices=(
            Slice((Source(Sym("math"), (0, 24)),)),
            Slice((Source(Sym("code"), (8, 32), (P("scale", 0.5),)),)),
            Slice(
                (
                    Source(Sym("math"), (24, 32), (P("weight", 0.5),)),
                    Source(Sym("code"), (24, 32), (P("weight", 0.5),)),
                ),
                (P("t", 0.3),),
            ),
        ),
    )
    assert mf.targets()["out/tiny"] == Target(
        "out/tiny",
        "linear",
        params=(P("base", Sym("base")),),
        sources=(Source(Sym("math"), None, (P("weight", 1),)), Source(Sym("code"), None, (P("weight", 1),))),
    )
    assert mf.targets()["all"] == Phony("all", ("out/final", "out/frank"))
    assert mf.targets()["out/alias"] == Phony("out/alias", ("out/final",))


def test_example_locations() -> None:
    mf = parse_mergefile(DATA / "example.mf")
    file = str(DATA / "example.mf")
    t = mf.targets()["out/math-code"]
    assert t.loc == Loc(file, 11, 1)
    assert t.method_loc == Loc(file, 11, 16)
    assert t.sources[1].params[2].loc == Loc(file, 13, 34)
    assert t.sources[1].ref.loc == Loc(file, 13, 5)
    assert t.params[2].loc == Loc(file, 16, 5)
    assert mf.models()["base"].loc == Loc(file, 8, 7)
    assert mf.models()["code"].loc == Loc(str(DATA / "common.mf"), 2, 7)
    assert mf.targets()["out/x"].loc == Loc(file, 3, 1)  # the include that made it
    frank = mf.targets()["out/frank"]
    assert frank.slices[2].loc == Loc(file, 28, 5)
    assert frank.slices[2].sources[1].loc == Loc(file, 30, 9)
    phony = mf.targets()["all"]
    assert phony.dep_locs == (Loc(file, 36, 6), Loc(file, 36, 16))


def test_origin_is_the_target_text() -> None:
    text = "x = 1\nout/a: linear {  # mix\n  m weight=1\n}\nall: out/a\n"
    t = parse_text(text).targets()["out/a"]
    assert t.origin == "out/a: linear {  # mix\n  m weight=1\n}"
    assert parse_text("out/l: lora(finetuned=m, rank=32)\n").targets()["out/l"].origin == (
        "out/l: lora(finetuned=m, rank=32)"
    )


# ---- values -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", 1),
        ("-3", -3),
        ("+2", 2),
        ("0.5", 0.5),
        ("-0.5", -0.5),
        (".25", 0.25),
        ("1e-3", 1e-3),
        ("2E5", 2e5),
        ("true", True),
        ("false", False),
        ('"a b"', "a b"),
        (r'"q\"uote\\ \n"', 'q"uote\\ \n'),
        ('"./models/x"', "./models/x"),
        ("union", Sym("union")),
        ("mlp.down_proj", Sym("mlp.down_proj")),
        ("v0.1", Sym("v0.1")),
        ("out/math-code", Sym("out/math-code")),
        ("[]", ()),
        ("[1, 2.5, x]", (1, 2.5, Sym("x"))),
        ("[[0, 1], [2]]", ((0, 1), (2,))),
        ("[1, 2,]", (1, 2)),
        ("[\n  0,\n  0.5,  # comment\n\n  1\n]", (0, 0.5, 1)),
        ('hf("org/x")', HfRef("org/x")),
        ('hf("org/x", revision="v1",)', HfRef("org/x", "v1")),
    ],
)
def test_values(text: str, value) -> None:
    st = one(f"v = {text}\n")
    assert st == Assign("v", value)
    assert type(st.value) is type(value)


def test_int_and_float_keep_their_types() -> None:
    assert type(one("v = 1").value) is int
    assert type(one("v = 1.0").value) is float


# ---- statements ---------------------------------------------------------------------------


def test_model_declarations() -> None:
    assert one('model m = "./m"') == ModelDecl("m", PathRef("./m"))
    assert one('model m = hf("o/r", revision="abc")') == ModelDecl("m", HfRef("o/r", "abc"))
    assert one('model m = hf(\n  "o/r",\n  revision="abc"\n)') == ModelDecl("m", HfRef("o/r", "abc"))


def test_includes_unresolved_by_parse_text() -> None:
    mf = parse_text('include "common.mf"\ninclude "merge.yml" as out/x\n')
    assert mf.statements == (Include("common.mf"), Include("merge.yml", "out/x"))


def test_target_forms() -> None:
    assert one("out/a: lora(finetuned=m, base=b, rank=32)") == Target(
        "out/a", "lora", params=(P("finetuned", Sym("m")), P("base", Sym("b")), P("rank", 32))
    )
    assert one("out/a: passthrough { slice m[0:2] }").method == "passthrough"
    assert one("out/a: ties() { m weight=1 }") == Target(
        "out/a", "ties", sources=(Source(Sym("m"), None, (P("weight", 1),)),)
    )
    assert one("out/a: ties {}") == Target("out/a", "ties")
    assert one("out/a: ties()") == Target("out/a", "ties")


def test_positional_args() -> None:
    t = one("out/best: evolve(ties, base=base, models=[math, code]) { budget = 100 }")
    assert t.args == (Sym("ties"),)
    assert t.params == (
        P("base", Sym("base")),
        P("models", (Sym("math"), Sym("code"))),
        P("budget", 100),
    )


def test_call_spanning_lines() -> None:
    t = one("out/a: ties(\n  base=b,  # the base\n  normalize=true,\n) {\n  m weight=1\n}")
    assert t.params == (P("base", Sym("b")), P("normalize", True))


def test_phony() -> None:
    assert one("all: a b out/c") == Phony("all", ("a", "b", "out/c"))
    assert one("out/alias: out/final") == Phony("out/alias", ("out/final",))


def test_filters() -> None:
    t = one('out/a: ties {\n  weight[self_attn] = 0.5\n  weight["model.norm"] = 1\n  m w[mlp.down_proj]=0 }')
    assert t.params == (P("weight", 0.5, "self_attn"), P("weight", 1, "model.norm"))
    assert t.sources == (Source(Sym("m"), None, (P("w", 0, "mlp.down_proj"),)),)


def test_star_filter_is_no_filter() -> None:
    assert one('out/a: ties { weight["*"] = 1 }').params == (P("weight", 1),)


def test_filtered_and_unfiltered_same_name_are_distinct() -> None:
    t = one("out/a: ties { weight = 1 ; weight[mlp] = 2 ; m weight=1 weight[mlp]=0 }")
    assert [p.filter for p in t.params] == [None, "mlp"]


def test_source_kinds_and_ranges() -> None:
    t = one('out/a: ties {\n  m\n  "./p"[0:4] w=1\n  hf("o/r")[2:6]\n}')
    assert t.sources == (
        Source(Sym("m")),
        Source(PathRef("./p"), (0, 4), (P("w", 1),)),
        Source(HfRef("o/r"), (2, 6)),
    )


def test_slices() -> None:
    t = one('out/f: passthrough {\n  slice "./p"[0:8]\n  slice { a[0:4] ; b[4:8] w=1 ; t = 0.3 ; t[mlp] = 1 }\n}')
    assert t.slices == (
        Slice((Source(PathRef("./p"), (0, 8)),)),
        Slice((Source(Sym("a"), (0, 4)), Source(Sym("b"), (4, 8), (P("w", 1),))), (P("t", 0.3), P("t", 1, "mlp"))),
    )


def test_semicolons_and_blank_lines() -> None:
    text = "\n\n# only a comment\n;;\nx = 1 ; y = 2\n\n\nout/a: linear { ; m weight=1 ;; n weight=1 ; }\n\n"
    mf = parse_text(text)
    assert mf.statements[:2] == (Assign("x", 1), Assign("y", 2))
    assert len(mf.statements[2].sources) == 2


def test_comments_everywhere() -> None:
    text = "out/a: linear(base=b, # c1\n) { # c2\n  # c3\n  m weight=[1, # c4\n 2] # c5\n} # c6"
    assert one(text).sources == (Source(Sym("m"), None, (P("weight", (1, 2)),)),)


def test_line_continuation() -> None:
    t = one("out/a: linear {\n  m weight=1 \\\n    density=0.5\n}")
    assert t.sources == (Source(Sym("m"), None, (P("weight", 1), P("density", 0.5))),)


def test_windows_newlines() -> None:
    mf = parse_text("x = 1\r\nout/a: linear {\r\n  m weight=1\r\n}\r\n")
    assert mf.statements[0] == Assign("x", 1)
    assert mf.targets()["out/a"].sources[0].ref == Sym("m")


def test_names_with_punctuation_and_keyword_prefixes() -> None:
    mf = parse_text('model model-2 = "./m"\nmodels = 3\nslices: a\nhf_x = true\nout/x-1.5: t(a=b)')
    assert set(mf.models()) == {"model-2"}
    assert mf.assigns()["models"].value == 3
    assert mf.targets()["slices"] == Phony("slices", ("a",))
    assert mf.assigns()["hf_x"].value is True


def test_block_param_may_restate_call_kwarg() -> None:
    t = one("out/a: ties(normalize=true) { normalize = false }")
    assert t.params == (P("normalize", True), P("normalize", False))


def test_empty_file() -> None:
    assert parse_text("") == Mergefile("<string>", ())
    assert parse_text("# nothing\n\n").statements == ()


# ---- includes -----------------------------------------------------------------------------


def test_includes_splice_in_order(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "common.mf").write_text('dtype = float16\ninclude "more.mf"\nmodel m = "./m"\n')
    (tmp_path / "sub" / "more.mf").write_text("seed = 1\n")
    (tmp_path / "Mergefile").write_text('include "sub/common.mf"\nout/a: linear { m weight=1 }\n')
    mf = parse_mergefile(tmp_path / "Mergefile")
    assert mf.statements[:3] == (Assign("dtype", Sym("float16")), Assign("seed", 1), ModelDecl("m", PathRef("./m")))
    assert isinstance(mf.statements[3], Target)
    # Locations point into the file that holds the statement, so relative paths resolve there.
    assert mf.models()["m"].loc.file == str(tmp_path / "sub" / "common.mf")
    assert mf.statements[1].loc.file == str(tmp_path / "sub" / "more.mf")


def test_same_file_included_twice_without_cycle(tmp_path: Path) -> None:
    (tmp_path / "vars.mf").write_text("x = 1\n")
    (tmp_path / "a.mf").write_text('include "vars.mf"\n')
    (tmp_path / "Mergefile").write_text('include "vars.mf"\ninclude "a.mf"\n')
    assert parse_mergefile(tmp_path / "Mergefile").statements == (Assign("x", 1), Assign("x", 1))


def test_include_yaml_as_target(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    yml = "merge_method: linear\nmodels:\n  - model: ./a\n    parameters: {weight: 1}\n"
    (tmp_path / "cfg" / "merge.yml").write_text(yml)
    (tmp_path / "Mergefile").write_text('include "cfg/merge.yml" as out/x\nall: out/x\n')
    mf = parse_mergefile(tmp_path / "Mergefile")
    t = mf.targets()["out/x"]
    assert t == Target(
        "out/x",
        "linear",
        sources=(Source(AutoRef("./a", str(tmp_path)), None, (P("weight", 1),)),),  # the Mergefile's folder
    )
    assert t.origin == yml
    assert t.loc == Loc(str(tmp_path / "Mergefile"), 1, 1)


def test_docs_examples_parse() -> None:
    """Every Mergefile snippet in docs/mergefile.md parses (error samples and YAML excluded)."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "mergefile.md").read_text()
    blocks = doc.split("```")[1::2]
    snippets = [b for b in blocks if not b.startswith(("yaml", "\nNAME:", "\nMergefile:"))]
    assert len(snippets) >= 6
    for snippet in snippets:
        parse_text(snippet, "docs/mergefile.md")
