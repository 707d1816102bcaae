"""`mergebuild graph`: valid DOT, models -> targets -> groups, the stale target marked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.cli.test_verbs_cache import verb
from tests.helpers import cli, mergefile_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pydot's pyparsing calls

RECIPE = """
out/ab: linear { a weight=1 ; b weight=1 }
out/abc: task_arithmetic(base=base) { out/ab weight=1 ; c weight=0.5 }
out/side: linear { a weight=1 ; c weight=1 }
all: out/abc out/side
"""


def _check_dot_structure(text: str) -> None:
    """What any DOT reader needs: one digraph, balanced braces, every statement terminated."""
    assert text.startswith("digraph ") and text.rstrip().endswith("}")
    body = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)  # drop quoted strings
    assert body.count("{") == body.count("}") == 1
    for line in body.splitlines()[1:-1]:
        assert line.strip().endswith(";"), line


def _parse(text: str):
    pydot = pytest.importorskip("pydot")
    graphs = pydot.graph_from_dot_data(text)
    assert graphs and len(graphs) == 1
    return graphs[0]


def _node(g, name: str):
    found = g.get_node(f'"{name}"')
    assert found, name
    return found[0]


def test_graph_is_valid_dot_with_the_stale_target_marked(tiny_models, tmp_path, capsys):
    cache = tmp_path / "cache"
    mf = mergefile_for(tmp_path, tiny_models, RECIPE)
    assert cli(tmp_path, "all", cache=cache) == 0
    mf.write_text(mf.read_text().replace("c weight=0.5", "c weight=0.75"))
    capsys.readouterr()
    assert verb(tmp_path, "graph", cache=cache) == 0
    text = capsys.readouterr().out
    _check_dot_structure(text)
    g = _parse(text)
    stale, fresh = _node(g, "target:out/abc"), _node(g, "target:out/ab")
    assert "#c00000" in stale.get("color") and "parameter changed" in stale.get("label")
    assert "#2a7a2a" in fresh.get("color") and "up to date" in fresh.get("label")
    assert "#2a7a2a" in _node(g, "target:out/side").get("color")
    edges = {(e.get_source().strip('"'), e.get_destination().strip('"')) for e in g.get_edges()}
    assert ("target:out/ab", "target:out/abc") in edges
    assert ("target:out/abc", "group:all") in edges and ("target:out/side", "group:all") in edges
    models = {s for s, _ in edges if s.startswith("model:")}
    assert {f"model:{tiny_models[n]}" for n in ("a", "b", "c", "base")} == models
    assert (f"model:{tiny_models['base']}", "target:out/abc") in edges


def test_graph_of_one_target_to_a_file(tiny_models, tmp_path, capsys):
    mergefile_for(tmp_path, tiny_models, RECIPE)
    out = tmp_path / "g.dot"
    assert verb(tmp_path, "graph", "out/ab", "-o", str(out), "--no-status", cache=tmp_path / "cache") == 0
    text = out.read_text()
    _check_dot_structure(text)
    g = _parse(text)
    names = {n.get_name().strip('"') for n in g.get_nodes()} - {"node", "edge"}
    assert names == {"target:out/ab", f"model:{tiny_models['a']}", f"model:{tiny_models['b']}"}
    assert "stale" not in text and "up to date" not in text


def test_graph_errors(tiny_models, tmp_path, capsys, monkeypatch):
    mergefile_for(tmp_path, tiny_models, RECIPE)
    cache = tmp_path / "cache"
    monkeypatch.setattr("shutil.which", lambda name: None)
    capsys.readouterr()
    assert verb(tmp_path, "graph", "-o", str(tmp_path / "g.svg"), cache=cache) == 2
    err = capsys.readouterr().err
    assert "needs Graphviz's 'dot' program" in err and "Traceback" not in err
    assert verb(tmp_path, "graph", "out/sdie", cache=cache) == 2
    assert "did you mean 'out/side'" in capsys.readouterr().err


def test_quote_escapes():
    from mergefile.plan.graph_dot import quote

    assert quote('a "b"\\c\nd') == '"a \\"b\\"\\\\c\\nd"'


def test_svg_goes_through_graphviz_dot(tiny_models, tmp_path, monkeypatch):
    """The dot binary is given the DOT text on stdin and -T/-o (a stand-in records them here)."""
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "dot"
    fake.write_text('#!/bin/sh\necho "$1" > "$3.args"\ncat > "$3"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    mergefile_for(tmp_path, tiny_models, RECIPE)
    out = tmp_path / "g.svg"
    assert verb(tmp_path, "graph", "-o", str(out), "--no-status", cache=tmp_path / "cache") == 0
    assert Path(f"{out}.args").read_text().strip() == "-Tsvg"
    _check_dot_structure(out.read_text())
