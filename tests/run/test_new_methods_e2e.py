"""The issue-19 methods end to end: coefficient edits, mergekit YAML, export, bad input.

Loading the outputs in transformers, determinism across builds and ``-j``, and half precision
are covered with every other method by ``test_methods_e2e.py`` (its RECIPES table).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mergefile.cli.main import main
from mergefile.store.log import BuildLog
from tests.helpers import cli, cli_json, mergefile_for, read_tensors

N = 39  # tensors of the tiny Llama

# method -> (recipe, the same recipe after a coefficient edit)
EDITS = {
    "tsv": (
        "tsv(base=base) { a weight=0.7 ; b weight=0.5 }",
        "tsv(base=base, alpha=0.9) { a weight=0.3 ; b weight=0.5 }",
    ),
    "iso_c": ("iso_c(base=base) { a ; b }", "iso_c(base=base, alpha=0.6) { a weight=2 ; b }"),
    "iso_cts": ("iso_cts(base=base) { a ; b }", "iso_cts(base=base, alpha=0.6) { a ; b weight=0.5 }"),
    "consensus_ta": ("consensus_ta(base=base) { a ; b }", "consensus_ta(base=base, lambda=0.7) { a weight=0.5 ; b }"),
    "consensus_ties": ("consensus_ties(base=base) { a ; b }", "consensus_ties(base=base) { a weight=0.4 ; b }"),
    "magmax": ("magmax(base=base) { a ; b }", "magmax(base=base, lambda=0.8) { a ; b }"),
    "pcb": ("pcb(base=base) { a ; b }", "pcb(base=base) { a weight=1.2 ; b weight=0.9 }"),
    "wudi": ("wudi(base=base, iterations=50) { a ; b }", "wudi(base=base, iterations=50, lr=2e-5) { a ; b }"),
}
STAGES = {"tsv": 2 * N}  # one SVD stage per tensor and fine-tune


def _three(models) -> dict[str, Path]:
    return {k: models[k] for k in ("base", "a", "b")}


def _build(d: Path, models, recipe: str, cache: Path, capsys) -> dict:
    d.mkdir(exist_ok=True)
    mergefile_for(d, _three(models), f"out/x: {recipe}")
    r = cli_json(d, cache=cache, capsys=capsys)
    assert r["exit"] == 0
    return r["targets"][0]


def _stage_totals(cache: Path) -> tuple[int, int]:
    """(stage hits, stage misses) of the latest run, from the build log."""
    records = [r for r in BuildLog(cache / "logs").read() if r.get("summary")]
    return records[-1]["stage_hits"], records[-1]["stage_misses"]


@pytest.mark.parametrize("name", sorted(EDITS))
def test_coefficient_edit_recomputes_no_stage_and_equals_a_clean_build(name, tiny_models, tmp_path, capsys):
    first, edited = EDITS[name]
    d, cache = tmp_path / "w", tmp_path / "cache"
    r = _build(d, tiny_models, first, cache, capsys)
    stages = STAGES.get(name, 0)
    assert r["computed"] == N and (r["stage_misses"], r["stage_hits"]) == (stages, 0)
    before = read_tensors(d / "out/x")

    r = _build(d, tiny_models, edited, cache, capsys)
    assert r["computed"] == N and (r["stage_misses"], r["stage_hits"]) == (0, stages)
    assert _stage_totals(cache) == (stages, 0)
    after = read_tensors(d / "out/x")
    assert any(not after[k].equal(before[k]) for k in after)  # the edit changed the merge

    clean = tmp_path / "clean"
    _build(clean, tiny_models, edited, tmp_path / "cache2", capsys)
    fresh = read_tensors(clean / "out/x")
    assert sorted(fresh) == sorted(after)
    for k in after:
        assert after[k].dtype == fresh[k].dtype and after[k].equal(fresh[k]), k


@pytest.mark.parametrize(
    "name, params, weight",
    [
        ("tsv", "  alpha: 0.9\n", True),
        ("iso_cts", "  common_space_fraction: 0.6\n", True),
        ("consensus_ties", "  k: 1\n", True),
        ("magmax", "  lambda: 0.7\n", False),  # magmax has no weights
    ],
)
def test_mergekit_yaml_names_the_method_and_builds_as_the_mergefile_does(
    name, params, weight, tiny_models, tmp_path, capsys
):
    m = _three(tiny_models)
    d = tmp_path / "w"
    d.mkdir()
    a_params = "\n    parameters: {weight: 0.6}" if weight else ""
    (d / "merge.yml").write_text(
        f"merge_method: {name}\nbase_model: {m['base']}\nparameters:\n{params}models:\n"
        f"  - model: {m['a']}{a_params}\n  - model: {m['b']}\n"
    )
    assert cli(d, "--config", "merge.yml", "out/y", cache=tmp_path / "cache") == 0
    key, value = params.strip().split(": ")
    recipe = f"{name}(base=base, {key}={value}) {{ a{' weight=0.6' if weight else ''} ; b }}"
    _build(tmp_path / "mf", tiny_models, recipe, tmp_path / "cache", capsys)
    yml, mf = read_tensors(d / "out/y"), read_tensors(tmp_path / "mf" / "out/x")
    assert sorted(yml) == sorted(mf) and all(yml[k].equal(mf[k]) for k in yml)


def test_export_marks_the_method_as_a_mergebuild_extension(tiny_models, tmp_path, capsys):
    d = tmp_path / "w"
    d.mkdir()
    mergefile_for(d, _three(tiny_models), "out/x: tsv(base=base) { a weight=0.7 ; b }\nout/l: linear { a weight=1 }")
    capsys.readouterr()
    assert main(["export", "out/x", "-C", str(d)]) == 0
    text = capsys.readouterr().out
    note = "# merge_method tsv is a mergebuild extension: mergekit cannot build this config"
    assert note in text and text.index(note) < text.index("merge_method: tsv\n")
    assert main(["export", "out/l", "-C", str(d)]) == 0
    assert "mergebuild extension" not in capsys.readouterr().out  # mergekit's own methods: no note
    (d / "x.yml").write_text(text)  # the exported file builds in mergebuild, note and all
    assert cli(d, "--config", "x.yml", "out/y", cache=tmp_path / "cache") == 0
    assert cli(d, "out/x", cache=tmp_path / "cache") == 0
    a, b = read_tensors(d / "out/x"), read_tensors(d / "out/y")
    assert all(a[k].equal(b[k]) for k in a)


@pytest.mark.parametrize(
    "body, words",
    [
        ("tsv(base=base, sv_reduction=2) { a ; b }", ["tsv", "sv_reduction must lie in [0, 1]"]),
        ("iso_cts(base=base, common_space_fraction=-1) { a ; b }", ["common_space_fraction must lie in [0, 1]"]),
        ("consensus_ta(base=base, k=-1) { a ; b }", ["k must be >= 0"]),
        ("consensus_ties(base=base) { a density=3 ; b }", ["model 'a'", "density must lie in [0, 1]"]),
        ("magmax { a ; b }", ["magmax", "base"]),
        ("pcb(base=base, pcb_ratio=0) { a ; b }", ["pcb_ratio must lie in (0, 1]"]),
        ("wudi(base=base, lr=0) { a ; b }", ["lr must be > 0"]),
    ],
)
def test_bad_parameters_fail_cleanly_before_reading(body, words, tiny_models, tmp_path, capsys):
    d = tmp_path / "w"
    d.mkdir()
    mergefile_for(d, _three(tiny_models), f"out/x: {body}")
    capsys.readouterr()
    assert cli(d, cache=tmp_path / "cache") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("mergebuild: error: ")
    for w in words:
        assert w in err, (w, err)
    assert not (d / "out").exists()
