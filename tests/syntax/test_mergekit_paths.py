"""mergekit's path rule from a project folder: configs in ``configs/``, models in ``./models``.

mergekit reads a relative model path from the working directory; so does ``--config`` (merge,
multi-document, mergekit-moe and mergekit-evolve files), with one fallback: a path found only
beside the YAML is used with a note, and a path found in both places as different folders is an
error naming both (``syntax/model_paths.py``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import cli, read_tensors

TIES = """\
merge_method: ties
base_model: ./models/base
models:
  - model: ./models/a
    parameters: {weight: 0.6, density: 0.5}
  - model: ./models/b
    parameters: {weight: 0.4, density: 0.5}
dtype: float32
"""
MULTI = """\
name: ab
merge_method: linear
models:
  - model: models/a
    parameters: {weight: 0.5}
  - model: models/b
    parameters: {weight: 0.5}
---
merge_method: slerp
base_model: ab
models:
  - model: ab
  - model: ./models/c
parameters:
  t: 0.3
"""
MOE = """\
base_model: ./models/base
gate_mode: random
dtype: float32
experts_per_token: 2
experts:
  - source_model: ./models/a
  - source_model: ./models/b
"""


@pytest.fixture
def project(tiny_models, tmp_path: Path) -> Path:
    """``tmp/project`` with ``models/`` (the tiny models) and an empty ``configs/``."""
    root = tmp_path / "project"
    (root / "configs").mkdir(parents=True)
    (root / "models").symlink_to(Path(tiny_models["a"]).parent, target_is_directory=True)
    return root


def _same(a: Path, b: Path) -> None:
    got, want = read_tensors(a), read_tensors(b)
    assert sorted(got) == sorted(want) and all(got[k].equal(want[k]) for k in want)


@pytest.mark.parametrize(
    ("text", "target"),
    [(TIES, "out/x"), (MULTI, "out/final"), (MOE, "out/moe")],
    ids=["merge", "multi-document", "moe"],
)
def test_config_in_a_subfolder_builds_as_from_the_project_root(project, text, target, capsys):
    (project / "configs" / "merge.yml").write_text(text)
    (project / "merge.yml").write_text(text)
    cache = project.parent / "cache"
    assert cli(project, "--config", "configs/merge.yml", target, cache=cache) == 0
    assert "relative to the YAML's folder" not in capsys.readouterr().err  # no fallback was needed
    shutil.move(project / target, project / "first")
    assert cli(project, "--config", "merge.yml", target, cache=cache) == 0
    _same(project / "first", project / target)
    recorded = project / target / ("mergekit_moe_config.yml" if "moe" in target else "mergebuild_config.yml")
    assert "./models/" in recorded.read_text() or "models/a" in recorded.read_text()


def test_identical_experts_with_random_gates_build_with_a_note(project, capsys):
    (project / "configs" / "moe.yml").write_text(MOE.replace("source_model: ./models/b", "source_model: ./models/a"))
    assert cli(project, "--config", "configs/moe.yml", "out/moe", cache=project.parent / "cache") == 0
    assert "the same model is listed as several experts (sparse upcycling" in capsys.readouterr().err
    cfg = json.loads((project / "out/moe/config.json").read_text())
    assert cfg["num_local_experts"] == 2
    t = read_tensors(project / "out/moe")
    experts = t["model.layers.0.mlp.experts.down_proj"]
    assert experts[0].equal(experts[1])  # two copies of one model


def test_moe_architecture_is_a_prefix_of_mergekit_names(project, capsys):
    (project / "configs" / "moe.yml").write_text(MOE + "architecture: mix\n")
    assert cli(project, "--config", "configs/moe.yml", "out/moe", cache=project.parent / "cache") == 0
    (project / "configs" / "moe.yml").write_text(MOE + "architecture: qwen\n")
    assert cli(project, "-n", "--config", "configs/moe.yml", "out/q", cache=project.parent / "cache") == 2
    assert "qwen2_moe needs exactly 1 shared expert(s), got 0" in capsys.readouterr().err


def test_a_path_found_only_beside_the_yaml_builds_with_a_note(project, tiny_models, capsys):
    (project / "configs" / "local").symlink_to(Path(tiny_models["a"]).parent, target_is_directory=True)
    (project / "configs" / "merge.yml").write_text(TIES.replace("./models/", "./local/"))
    assert cli(project, "--config", "configs/merge.yml", "out/x", cache=project.parent / "cache") == 0
    err = capsys.readouterr().err
    assert err.count("model './local/a' is not in the working directory") == 1, err
    assert str(project / "configs" / "local" / "a") in err


def test_a_path_in_both_places_naming_different_folders_is_an_error(project, tiny_models, capsys):
    other = project / "configs" / "models"
    other.mkdir()
    shutil.copytree(tiny_models["b"], other / "a")  # configs/models/a is not models/a
    (project / "configs" / "merge.yml").write_text(TIES)
    assert cli(project, "-n", "--config", "configs/merge.yml", "out/x", cache=project.parent / "cache") == 2
    err = capsys.readouterr().err
    assert "configs/merge.yml:4:12: model './models/a' names two different folders" in err, err
    assert str(project / "models" / "a") in err and str(other / "a") in err
    assert "Traceback" not in err and not (project / "out").exists()


def test_a_missing_path_names_both_places_it_was_looked_for(project, capsys):
    (project / "configs" / "merge.yml").write_text(TIES.replace("./models/a", "./nowhere/a"))
    assert cli(project, "-n", "--config", "configs/merge.yml", "out/x") == 2
    err = capsys.readouterr().err
    assert "model './nowhere/a' is neither a local folder" in err and "the YAML's folder" in err, err


def test_evolve_genome_paths_are_read_from_the_working_directory(project, monkeypatch):
    from mergefile.targets.evolve.config import load_genome_yaml
    from mergefile.targets.evolve.outputs import render_mergekit

    (project / "configs" / "genome.yml").write_text(
        "genome:\n  models: [./models/a, ./models/b]\n  merge_method: ties\n  base_model: ./models/base\n"
        "  layer_granularity: 2\ntasks:\n  - name: t\n    weight: 1.0\n"
    )
    monkeypatch.chdir(project)
    cfg = load_genome_yaml("configs/genome.yml")
    text = render_mergekit(cfg, _some_candidate(cfg))
    assert str((project / "models" / "a").resolve()) in text  # the YAML names folders that exist


def _some_candidate(cfg):
    import numpy as np

    from mergefile.targets.evolve.genome import Genome

    g = Genome(cfg.genome, num_layers=4)
    return g.target(np.random.default_rng(3).normal(size=g.size), "final_model")


def test_evolve_best_config_builds_with_config(project, monkeypatch, capsys):
    """The winning recipe of an evolve run, ``best_config.yaml``, writes ``filter: null``."""
    from mergefile.targets.evolve.config import load_genome_yaml
    from mergefile.targets.evolve.outputs import render_mergekit

    (project / "configs" / "genome.yml").write_text(
        "genome:\n  models: [./models/a, ./models/b]\n  merge_method: ties\n  base_model: ./models/base\n"
        "  layer_granularity: 2\n  dtype: float32\n  filters: [self_attn, mlp]\ntasks:\n  - name: t\n    weight: 1.0\n"
    )
    monkeypatch.chdir(project)
    cfg = load_genome_yaml("configs/genome.yml")
    best = render_mergekit(cfg, _some_candidate(cfg))
    assert "filter: null" in best
    (project / "evolve-out").mkdir()
    (project / "evolve-out" / "best_config.yaml").write_text(best)
    assert cli(project, "--config", "evolve-out/best_config.yaml", "out/best", cache=project.parent / "cache") == 0
    assert len(read_tensors(project / "out/best")) > 0
