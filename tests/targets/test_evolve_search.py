"""Evolve end to end on CPU: tiny models, the local lm-eval task, a local Ray with 2 CPUs.

One uninterrupted search is the reference; the other runs (resumed, cached, in memory, other
strategies, a Mergefile target) must see the same candidates and scores.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from mergefile.cli.main import main
from tests.helpers import read_tensors
from tests.targets.evolve_support import TASK, TASK_DIR, make_evolve_models, write_genome

pytestmark = pytest.mark.slow

BUDGET = 6
POP = 4


@pytest.fixture(scope="module")
def evo(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("evolve")
    models = make_evolve_models(root / "models")
    return SimpleNamespace(root=root, models=models, genome=write_genome(root / "genome.yml", models))


def evolve(evo, storage: str, cache: str, budget: int = BUDGET, *extra: str) -> int:
    argv = [
        "evolve",
        str(evo.genome),
        "--storage-path",
        str(evo.root / storage),
        "--cache-dir",
        str(evo.root / cache),
        "--max-fevals",
        str(budget),
        "--force-population-size",
        str(POP),
        "--task-search-path",
        str(TASK_DIR),
        "--quiet",
        *extra,
    ]
    return main(argv)


def history(evo, storage: str) -> list[dict]:
    return [json.loads(line) for line in (evo.root / storage / "history.jsonl").read_text().splitlines()]


def by_member(lines: list[dict]) -> dict[tuple[int, int], tuple[str, float]]:
    return {(h["generation"], h["member"]): (h["key"], h["score"]) for h in lines}


@pytest.fixture(scope="module")
def reference(evo):
    """The uninterrupted search: 6 evaluations, 2 pool workers, models written to disk."""
    assert evolve(evo, "ref", "cache") == 0
    return history(evo, "ref")


def test_end_to_end_search_writes_everything(evo, reference, capsys):
    st = evo.root / "ref"
    assert [h["n"] for h in reference] == list(range(1, BUDGET + 1))  # a hard budget
    assert all(not h["cached"] and h["score"] is not None and TASK in h["results"] for h in reference)
    assert len({h["key"] for h in reference}) == BUDGET
    assert len({h["worker"] for h in reference}) <= 2  # the pool: one actor per CPU of the local Ray
    best = json.loads((st / "best.json").read_text())
    assert best["score"] == max(h["score"] for h in reference) >= reference[0]["score"]
    for name in ("best.mf", "best_config.yaml", "history.jsonl", "state.json", "checkpoint.pkl"):
        assert (st / name).is_file(), name
    assert (st / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "merge_method: ties" in (st / "best_config.yaml").read_text()
    assert json.loads((st / "state.json").read_text())["evaluations"] == BUDGET
    line = reference[0]
    assert {"x", "params", "results", "seconds", "key", "score", "time"} <= set(line)
    assert (st / "final_model" / "config.json").is_file()  # --save-final-model (default on)


def test_best_recipe_rebuilds_to_the_recorded_score(evo, reference, tmp_path):
    """best.mf, built anew by `mergebuild` with an empty cache, is the evaluated model."""
    from mergefile.targets.evolve.config import TaskSpec
    from mergefile.targets.evolve.scoring import Scorer, ScoreSpec, combine

    st = evo.root / "ref"
    shutil.copy(st / "best.mf", tmp_path / "best.mf")
    assert main(["-C", str(tmp_path), "-f", "best.mf", "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    rebuilt = read_tensors(tmp_path / "final_model")
    saved = read_tensors(st / "final_model")
    assert rebuilt.keys() == saved.keys() and all((rebuilt[k] == saved[k]).all() for k in saved)
    tasks = (TaskSpec(TASK),)
    scorer = Scorer(ScoreSpec(tasks, task_paths=(str(TASK_DIR),)))
    best = json.loads((st / "best.json").read_text())
    assert combine(tasks, scorer.score_folder(tmp_path / "final_model")) == best["score"]
    # the demo tokenizer's template was removed: none may be applied
    assert scorer.chat_template(None) is False


def test_resume_continues_the_history_without_repeating(evo, reference):
    """Interrupted after 3 evaluations (the budget), resumed to 6 — with another strategy, too:
    buffered, then serial (Ray tasks, which reuse warm worker processes; actors would not)."""
    assert evolve(evo, "resumed", "cache-resume", 3, "--strategy", "buffered", "--no-save-final-model") == 0
    first = history(evo, "resumed")
    assert len(first) == 3 and json.loads((evo.root / "resumed" / "state.json").read_text())["stop"] == "max_fevals"
    assert evolve(evo, "resumed", "cache-resume", BUDGET, "--strategy", "serial", "--no-save-final-model") == 0
    lines = history(evo, "resumed")
    assert lines[:3] == first and [h["n"] for h in lines] == list(range(1, BUDGET + 1))
    assert not any(h["cached"] for h in lines)  # each candidate scored once: nothing was redone
    assert len({h["key"] for h in lines}) == BUDGET
    # the interrupted search is the uninterrupted one, candidate for candidate
    assert by_member(lines) == by_member(reference)
    # buffered and serial merge each candidate into its own folder and remove it after scoring
    assert not list((evo.root / "resumed" / "candidates").iterdir())


def test_second_run_over_the_same_genome_evaluates_nothing(evo, reference, ray_local):
    assert evolve(evo, "again", "cache", BUDGET, "--no-save-final-model") == 0
    lines = history(evo, "again")
    assert len(lines) == BUDGET and all(h["cached"] for h in lines)
    assert by_member(lines) == by_member(reference)
    # and the finished search itself, run again, does nothing
    assert evolve(evo, "ref", "cache") == 0
    assert len(history(evo, "ref")) == BUDGET


def test_in_memory_scores_like_the_written_model(evo, reference):
    assert evolve(evo, "mem", "cache-mem", 3, "--in-memory", "--workers", "1", "--no-save-final-model") == 0
    lines = history(evo, "mem")
    ref = by_member(reference)
    assert all(ref[k] == v for k, v in by_member(lines).items())
    assert not (evo.root / "mem" / "candidates").exists()  # no candidate folder written


def test_in_memory_needs_the_pool_strategy(evo, capsys):
    code = evolve(evo, "bad", "cache-bad", 2, "--in-memory", "--strategy", "serial")
    assert code == 2 and "--in-memory needs --strategy pool" in capsys.readouterr().err


def test_evolve_target_in_a_mergefile(evo, reference, tmp_path, capsys):
    """The Mergefile spelling: built through the score cache (no evaluation), then up to date."""
    m = evo.models
    (tmp_path / "Mergefile").write_text(f"""
model base = "{m["base"]}"
model a = "{m["a"]}"
model b = "{m["b"]}"

out/best: evolve(ties, base=base, models=[a, b]) {{
    layer_granularity = 2
    dtype = float32
    budget = {BUDGET}
    popsize = {POP}
    task_path = "{TASK_DIR}"
    {TASK} weight=1
}}
""")
    cache = str(evo.root / "cache")
    assert main(["-C", str(tmp_path), "--cache-dir", cache, "--quiet", "out/best"]) == 0
    storage = next(Path(cache, "evolve").glob("out_best-*"))
    ref_best = json.loads((evo.root / "ref" / "best.json").read_text())
    assert json.loads((storage / "best.json").read_text())["key"] == ref_best["key"]  # same search, same best
    built = read_tensors(tmp_path / "out" / "best")
    saved = read_tensors(evo.root / "ref" / "final_model")
    assert built.keys() == saved.keys() and all((built[k] == saved[k]).all() for k in saved)
    assert all(h["cached"] for h in history(SimpleNamespace(root=storage.parent), storage.name))
    capsys.readouterr()
    assert main(["-C", str(tmp_path), "--cache-dir", cache, "-q", "out/best"]) == 0  # up to date: no search
