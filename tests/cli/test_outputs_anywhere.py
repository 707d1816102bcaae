"""Outputs anywhere: quoted target names (absolute, ``../``, starting with ``.``) build, rebuild
incrementally, are used as other targets' inputs, and every verb handles them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mergefile.cli.main import main
from mergefile.syntax import parse_text
from mergefile.syntax.ast import Sym
from mergefile.syntax.layout import format_mergefile
from tests.helpers import assert_same_tensors, cli, cli_json, read_tensors

RECIPE = """\
model base = "{base}"
model a = "{a}"
model b = "{b}"

"{scratch}/x": linear {{
    a weight=0.5
    b weight=0.5
}}

"../out/y": slerp(base="{scratch}/x") {{
    "{scratch}/x"
    b
    t = 0.3
}}

".hidden": linear {{
    "../out/y" weight=0.7
    a weight=0.3
}}

all: ".hidden" "../out/y"
"""


def _project(tmp_path: Path, tiny_models, **edits) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir(exist_ok=True)
    text = RECIPE.format(scratch=tmp_path / "scratch", **{k: tiny_models[k] for k in ("base", "a", "b")})
    for old, new in edits.items():
        text = text.replace(old.replace("_", " "), new)
    (proj / "Mergefile").write_text(text)
    return proj


def _targets(report: dict) -> dict[str, dict]:
    return {t["target"]: t for t in report["targets"]}


def test_quoted_names_parse_and_paths_naming_targets_are_references():
    mf = parse_text(
        'model a = "./a"\n"/s/x/": linear { a }\n"../y": linear { "/s/x" }\n'
        '".h": linear(base="../y") { "./../y" }\ng: "/s/x" ".h"\n'
    )
    t = mf.targets()
    assert list(t) == ["/s/x", "../y", ".h", "g"]
    assert t["../y"].sources[0].ref == Sym("/s/x")
    assert t[".h"].sources[0].ref == Sym("../y") and t[".h"].params[0].value == Sym("../y")
    assert t["g"].deps == ("/s/x", ".h")


def test_fmt_round_trips_quoted_names():
    text = '"/s/x": linear {\n    "./m" weight=1\n}\n"../y": linear {\n    "/s/x" weight=1\n}\nall: "../y" "/s/x"\n'
    assert format_mergefile(text) == text


def test_build_rebuild_and_use_as_inputs(tiny_models, tmp_path, capsys):
    proj, cache = _project(tmp_path, tiny_models), tmp_path / "cache"
    first = _targets(cli_json(proj, "all", cache=cache, capsys=capsys))
    x, y = tmp_path / "scratch" / "x", tmp_path / "out" / "y"
    assert list(first) == [str(x), "../out/y", ".hidden"] and all(t["built"] for t in first.values())
    # y is the slerp of x's output and b; .hidden reads y's output
    a, b = read_tensors(tiny_models["a"]), read_tensors(tiny_models["b"])
    got_x, got_y, got_h = read_tensors(x), read_tensors(y), read_tensors(proj / ".hidden")
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch_close(got_x[name], 0.5 * a[name] + 0.5 * b[name])
    assert torch_close(got_h[name], 0.7 * got_y[name] + 0.3 * a[name])
    assert cli(proj, "-q", "all", cache=cache) == 0
    _project(tmp_path, tiny_models, **{"t = 0.3": "t = 0.4"})
    second = _targets(cli_json(proj, "all", cache=cache, capsys=capsys))
    assert second[str(x)]["up_to_date"] and not second[str(x)]["built"]
    assert second["../out/y"]["built"] and second[".hidden"]["built"]
    for folder in (tmp_path / "scratch", tmp_path / "out"):  # no litter beside the outputs
        assert [p.name for p in folder.iterdir()] == [folder.name == "out" and "y" or "x"]
    assert sorted(p.name for p in proj.iterdir()) == [".hidden", "Mergefile"]


def torch_close(a, b) -> bool:
    import torch

    return torch.allclose(a, b, atol=1e-6)


def test_verbs_handle_quoted_targets(tiny_models, tmp_path, capsys):
    proj, cache = _project(tmp_path, tiny_models), tmp_path / "cache"
    assert cli(proj, "all", cache=cache) == 0
    capsys.readouterr()
    assert main(["-C", str(proj), "--cache-dir", str(cache), "status", "../out/y"]) == 0
    assert main(["-C", str(proj), "--cache-dir", str(cache), "graph", "all"]) == 0
    dot = capsys.readouterr().out
    assert (
        f'"target:{tmp_path}/scratch/x" -> "target:../out/y"' in dot and '"target:../out/y" -> "target:.hidden"' in dot
    )
    assert main(["-C", str(proj), "--cache-dir", str(cache), "lock"]) == 0
    assert json.loads((proj / "Mergefile.lock").read_text())["models"]
    assert main(["-C", str(proj), "--cache-dir", str(cache), "push", "-n", "../out/y", "org/y"]) == 0
    assert "from " in capsys.readouterr().out
    assert main(["-C", str(proj), "export", "../out/y", "-o", str(proj / "y.yml")]) == 0
    assert main(["-C", str(proj), "import", "y.yml", "--target", "../out/y2", "-o", str(proj / "y.mf")]) == 0
    imported = (proj / "y.mf").read_text()
    assert '"../out/y2": slerp' in imported
    assert cli(proj, "-f", "y.mf", "../out/y2", cache=cache) == 0
    assert_same_tensors(read_tensors(tmp_path / "out" / "y2"), read_tensors(tmp_path / "out" / "y"))


@pytest.mark.parametrize("name", ['""', '"."', '".."'])
def test_a_quoted_name_that_is_no_folder_is_refused(name, tmp_path, capsys):
    (tmp_path / "Mergefile").write_text(f'model a = "./a"\n{name}: linear {{ a }}\n')
    assert main(["-C", str(tmp_path), "-n"]) == 2
    assert "is not an output folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "line, word",
    [
        ("../out/x: linear { a }", "../out/x"),
        ("/scratch/x: linear { a }", "/scratch/x"),
        (".h: linear { a }", ".h"),
        ("x: linear { ../out/y weight=1 }", "../out/y"),
    ],
)
def test_a_bare_path_says_to_quote_it(line, word, tmp_path, capsys):
    (tmp_path / "Mergefile").write_text(f'model a = "./a"\n{line}\n')
    assert main(["-C", str(tmp_path), "-n"]) == 2
    err = capsys.readouterr().err
    assert f"a path must be quoted: {word}" in err and f'write "{word}"' in err and "Traceback" not in err
