"""CI mode: -q / status exit codes across edits, --explain naming what changed, a restored cache,
the example workflow, and progress bars that measure bytes."""

from __future__ import annotations

import os
import shutil

from tests.cli.test_verbs_cache import verb
from tests.helpers import REPO, age_files, cli, cli_json, mergefile_for

TIES = "out/t: ties(base=base) {\n a weight=0.5 density=0.5\n b weight=0.5 density=0.5\n}"


def test_question_exit_codes_across_edits(tiny_models, tmp_path, capsys):
    cache = tmp_path / "cache"
    models = {n: tmp_path / "models" / n for n in ("base", "a", "b")}
    for n, p in models.items():
        shutil.copytree(tiny_models[n], p)
    mf = mergefile_for(tmp_path, models, TIES)
    text = mf.read_text()
    assert cli(tmp_path, "-q", cache=cache) == 1  # never built
    assert cli(tmp_path, cache=cache) == 0
    assert cli(tmp_path, "-q", cache=cache) == 0
    assert verb(tmp_path, "status", cache=cache) == 0

    mf.write_text(text.replace("a weight=0.5 density=0.5", "a weight=0.5 density=0.7"))
    capsys.readouterr()
    assert cli(tmp_path, "-q", "--explain", cache=cache) == 1
    assert "density of a 0.5 -> 0.7" in capsys.readouterr().out
    r = cli_json(tmp_path, "--explain", cache=cache, capsys=capsys)["targets"][0]
    assert {s["reason"] for s in r["stale"]} == {"param_changed"}
    assert all("density of a 0.5 -> 0.7" in s["details"] for s in r["stale"])
    capsys.readouterr()
    assert verb(tmp_path, "status", cache=cache) == 1
    assert "out/t: stale (39 tensors)" in capsys.readouterr().out

    mf.write_text(text)  # reverted before building: the output matches again
    assert cli(tmp_path, "-q", cache=cache) == 0
    age_files(models["a"], seconds=30)  # a new mtime, same bytes: content decides
    assert cli(tmp_path, "-q", cache=cache) == 0

    mf.write_text(text.replace("ties(", "dare_ties("))
    capsys.readouterr()
    assert cli(tmp_path, "-q", "--explain", cache=cache) == 1
    assert "method ties -> dare_ties" in capsys.readouterr().out
    assert cli(tmp_path, cache=cache) == 0
    assert cli(tmp_path, "-q", cache=cache) == 0
    assert cli(tmp_path, "-q", "out/nope", cache=cache) == 2
    assert verb(tmp_path, "status", "out/nope", cache=cache) == 2


def test_restored_cache_rebuilds_without_computing(tiny_models, tmp_path, capsys):
    """What CI does: a fresh checkout (no outputs) with the cache folder restored."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    mergefile_for(one, tiny_models, TIES)
    assert cli(one, cache=one / "cache") == 0
    two.mkdir()
    shutil.copy(one / "Mergefile", two / "Mergefile")
    shutil.copytree(one / "cache", two / "cache")
    assert cli(two, "-q", cache=two / "cache") == 1  # no output folder yet
    r = cli_json(two, cache=two / "cache", capsys=capsys)["targets"][0]
    assert r["built"] and r["computed"] == 0 and r["cache_hits"] == 39
    assert cli(two, "-q", cache=two / "cache") == 0


def test_example_workflow_and_docs():
    import yaml

    wf_path = REPO / "recipes/ci/mergebuild.yml"
    text = wf_path.read_text()
    assert text.startswith("#")  # a header saying what it does
    wf = yaml.safe_load(text)
    steps = [s for job in wf["jobs"].values() for s in job["steps"]]
    runs = "\n".join(s.get("run", "") for s in steps)
    cache_steps = [s for s in steps if str(s.get("uses", "")).startswith("actions/cache")]
    assert cache_steps and "hashFiles('Mergefile'" in cache_steps[0]["with"]["key"]
    assert "mergebuild -q" in runs and "mergebuild push" in runs and "mergebuild lock --check" in runs
    push = next(s for s in steps if "mergebuild push" in s.get("run", ""))
    assert "refs/heads/main" in push["if"]
    for doc in ("docs/ci.md", "docs/cache.md"):
        assert (REPO / doc).read_text().startswith("# ")


def test_progress_bars_measure_bytes_not_tensors():
    from rich.progress import TransferSpeedColumn

    from mergefile.cli.progress import RichProgress

    p = RichProgress()
    assert not any(isinstance(c, TransferSpeedColumn) for c in p.bar.columns)
    p.start_target("out/x", 10)
    p.advance("out/x", 2, 3_000_000)
    p.advance("out/x", 1, 1_000_000)
    task = p.bar.tasks[0]
    assert task.completed == 3 and task.fields["bytes"] == 4_000_000
    rate = next(c for c in p.bar.columns if type(c).__name__ == "ByteRateColumn")
    text = rate.render(task).plain
    assert text.endswith(" MB/s") and float(text.split()[0]) > 1.0
    p.end_target("out/x")
    assert not p.bar.tasks


def test_piped_builds_show_no_bars(tiny_models, tmp_path):
    """Without --quiet, a build whose stderr is not a terminal prints plain lines only."""
    import subprocess
    import sys

    mergefile_for(tmp_path, tiny_models, "out/x: linear { a weight=1 ; b weight=1 }")
    r = subprocess.run(
        [sys.executable, "-m", "mergefile.cli.main", "-C", str(tmp_path), "--cache-dir", str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "\x1b" not in r.stderr and "━" not in r.stderr
    assert "out/x: built" in r.stdout
