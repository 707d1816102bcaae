"""Multi-document mergekit YAML (mergekit-multi): one graph, and only changed stages rebuild."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import assert_same_tensors, cli, cli_json, read_tensors

MULTI = """\
name: ab
merge_method: linear
models:
  - model: models/a
    parameters: {weight: 0.5}
  - model: models/b
    parameters: {weight: 0.5}
---
name: bc
merge_method: linear
models:
  - model: models/b
    parameters: {weight: 0.7}
  - model: models/c
    parameters: {weight: 0.3}
---
merge_method: slerp
base_model: ab
models:
  - model: ab
  - model: bc
parameters:
  t: 0.4
"""


def _setup(tmp_path: Path, tiny_models) -> Path:
    (tmp_path / "models").symlink_to(Path(tiny_models["a"]).parent, target_is_directory=True)
    (tmp_path / "multi.yml").write_text(MULTI)
    return tmp_path


def _by_target(report: dict) -> dict[str, dict]:
    return {t["target"]: t for t in report["targets"]}


def test_editing_one_stage_rebuilds_it_and_its_dependents_only(tiny_models, tmp_path, capsys):
    work, cache = _setup(tmp_path, tiny_models), tmp_path / "cache"
    first = _by_target(cli_json(work, "--config", "multi.yml", "out/final", cache=cache, capsys=capsys))
    assert list(first) == ["out/ab", "out/bc", "out/final"]
    assert all(t["built"] for t in first.values())
    (work / "multi.yml").write_text(MULTI.replace("weight: 0.7", "weight: 0.6"))
    second = _by_target(cli_json(work, "--config", "multi.yml", "out/final", cache=cache, capsys=capsys))
    assert second["out/ab"]["up_to_date"] and not second["out/ab"]["built"]
    assert second["out/bc"]["built"] and second["out/final"]["built"]
    third = cli_json(work, "--config", "multi.yml", "out/final", cache=cache, capsys=capsys)
    assert third["up_to_date"]


def test_editing_the_last_document_leaves_the_stages_alone(tiny_models, tmp_path, capsys):
    work, cache = _setup(tmp_path, tiny_models), tmp_path / "cache"
    cli_json(work, "--config", "multi.yml", "out/final", cache=cache, capsys=capsys)
    (work / "multi.yml").write_text(MULTI.replace("t: 0.4", "t: 0.5"))
    report = _by_target(cli_json(work, "-n", "--config", "multi.yml", "out/final", cache=cache, capsys=capsys))
    assert report["out/ab"]["up_to_date"] and report["out/bc"]["up_to_date"]
    assert not report["out/final"]["up_to_date"]


def test_target_prefix_places_the_stages(tiny_models, tmp_path, capsys):
    work = _setup(tmp_path, tiny_models)
    report = cli_json(
        work,
        "-n",
        "--config",
        "multi.yml",
        "out/final",
        "--target-prefix",
        "stages/",
        cache=tmp_path / "cache",
        capsys=capsys,
    )
    assert [t["target"] for t in report["targets"]] == ["stages/ab", "stages/bc", "out/final"]


def test_include_as_brings_the_stages(tiny_models, tmp_path, capsys):
    """``include "multi.yml" as out/x``: the same chain inside a Mergefile, the same model."""
    work, cache = _setup(tmp_path, tiny_models), tmp_path / "cache"
    (work / "Mergefile").write_text('include "multi.yml" as out/x\n')
    report = _by_target(cli_json(work, "out/x", cache=cache, capsys=capsys))
    assert list(report) == ["out/ab", "out/bc", "out/x"]
    assert cli(work, "--config", "multi.yml", "out/final", cache=cache) == 0
    assert_same_tensors(read_tensors(work / "out/x"), read_tensors(work / "out/final"))


def test_import_and_export_a_multi_stage_file(tiny_models, tmp_path, capsys):
    work = _setup(tmp_path, tiny_models)
    capsys.readouterr()
    assert cli(work, "-n", "--config", "multi.yml", "out/final") == 0  # sanity: it plans
    from mergefile.cli.main import main

    capsys.readouterr()
    assert main(["import", "multi.yml", "--target", "out/final", "-C", str(work)]) == 0
    text = capsys.readouterr().out
    assert "out/final: slerp(base=out/ab) {" in text and "out/ab: linear {" in text
    assert text.index("out/final:") < text.index("out/ab:")  # the default goal comes first
    (work / "Mergefile").write_text(text)
    assert main(["export", "out/final", "-C", str(work)]) == 0
    exported = capsys.readouterr().out
    assert exported.count("---\n") == 2 and "name: ab\n" in exported and "base_model: ab\n" in exported
