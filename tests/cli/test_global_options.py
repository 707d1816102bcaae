"""Global options before a verb, as git reads them: ``mergebuild -f Mergefile graph``."""

from __future__ import annotations

from mergefile.cli.main import main, split_global_options
from tests.helpers import mergefile_for

BODY = """
out/m: linear {
    a weight=0.5
    b weight=0.5
}
"""


def test_split_reads_options_and_their_values():
    verb, rest, given = split_global_options(["-f", "X.mf", "--cache-dir=/c", "--quiet", "graph", "--format", "dot"])
    assert verb == "graph" and rest == ["--format", "dot"]
    assert given == {"file": ("--file", "X.mf"), "cache_dir": ("--cache-dir", "/c"), "quiet": ("--quiet", True)}
    assert split_global_options(["-f", "X.mf", "out/graph"]) is None  # a target, not a verb
    assert split_global_options(["graph"]) is None  # handled directly


def test_file_and_directory_before_graph(tiny_models, tmp_path, capsys, monkeypatch):
    (tmp_path / "sub").mkdir()
    mf = mergefile_for(tmp_path / "sub", {"a": tiny_models["a"], "b": tiny_models["b"]}, BODY)
    mf.rename(tmp_path / "sub" / "Recipe.mf")
    monkeypatch.chdir(tmp_path)
    assert main(["-C", "sub", "-f", "Recipe.mf", "--quiet", "graph"]) == 0
    assert '"target:out/m"' in capsys.readouterr().out


def test_verb_flag_wins_over_the_global_one(tiny_models, tmp_path, capsys, monkeypatch):
    mergefile_for(tmp_path, {"a": tiny_models["a"], "b": tiny_models["b"]}, BODY)
    monkeypatch.chdir(tmp_path)
    assert main(["-f", "missing.mf", "status", "-f", "Mergefile"]) == 1  # stale, not "no Mergefile"
    assert main(["-f", "missing.mf", "status"]) == 2
    assert "missing.mf" in capsys.readouterr().err


def test_an_option_a_verb_does_not_take_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["-B", "fmt"]) == 2
    err = capsys.readouterr().err
    assert "option '--always-make' does not apply to 'mergebuild fmt'" in err and "Traceback" not in err
