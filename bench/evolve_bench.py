"""Evolve benchmark: seconds per evaluation (merge + lm-eval) on the tiny genome, with and without
``--in-memory``.

The genome of the end-to-end test (a tiny Llama base and two fine-tunes, ties over 2 layer
groups, the 12-question local task in tests/data/evolve_task), hf backend, a local Ray with 2
CPUs and one pool worker, so evaluations run one after another. Each mode gets a fresh cache and
storage path, so every evaluation merges and scores (no cache hits). Reported per mode:

* ``steady``: median seconds of one evaluation (merge + score) once the worker is warm;
* ``first``: the first evaluation (the worker imports torch/transformers/lm-eval, loads the
  tasks and, in memory, the resident model);
* ``wall``: wall-clock time of the whole search divided by the evaluations (Ray start,
  optimizer, checkpoints, history and outputs included).

    .venv/bin/python bench/evolve_bench.py [--evals 12] [--json bench/last_evolve_run.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
WORK = ROOT / "work" / "evolve"
sys.path.insert(0, str(REPO))


def run_mode(in_memory: bool, evals: int, models: dict, genome: Path) -> dict:
    from mergefile.store.store import Store
    from mergefile.targets.evolve.config import load_genome_yaml
    from mergefile.targets.evolve.search import EvolveOptions, run_search
    from tests.targets.evolve_support import TASK_DIR

    name = "in-memory" if in_memory else "on-disk"
    shutil.rmtree(WORK / name, ignore_errors=True)
    options = EvolveOptions(
        storage_path=str(WORK / name / "storage"),
        max_fevals=evals,
        popsize=4,
        workers=1,
        in_memory=in_memory,
        task_search_path=(str(TASK_DIR),),
        save_final_model=False,
    )
    t0 = time.perf_counter()
    with Store(WORK / name / "cache") as store:
        result = run_search(load_genome_yaml(genome), options, store)
    wall = time.perf_counter() - t0
    secs = [h["seconds"] for h in result.history]
    merge = [h["merge_seconds"] for h in result.history[1:]]
    score = [h["eval_seconds"] for h in result.history[1:]]
    return {
        "mode": name,
        "evaluations": len(secs),
        "scored": result.scored,
        "first": round(secs[0], 3),
        "steady": round(statistics.median(secs[1:]), 3),
        "steady_merge": round(statistics.median(merge), 3),
        "steady_score": round(statistics.median(score), 3),
        "wall_per_eval": round(wall / len(secs), 3),
        "wall": round(wall, 2),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--evals", type=int, default=12, help="evaluations per mode (default 12)")
    p.add_argument("--json", default=str(ROOT / "last_evolve_run.json"), help="where to write the figures")
    args = p.parse_args()
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    from mergefile.run.ray_executor import ray_session
    from tests.targets.evolve_support import make_evolve_models, write_genome

    WORK.mkdir(parents=True, exist_ok=True)
    models = make_evolve_models(WORK / "models")
    genome = write_genome(WORK / "genome.yml", models)
    rows = []
    with ray_session(None, 2):
        for in_memory in (False, True):
            rows.append(run_mode(in_memory, args.evals, models, genome))
    load = os.getloadavg()[0]
    print(f"{'mode':<10} {'evals':>5} {'first s':>8} {'steady s':>9} {'(merge':>7} {'+ score)':>9} {'wall/eval s':>12}")
    for r in rows:
        print(
            f"{r['mode']:<10} {r['evaluations']:>5} {r['first']:>8.2f} {r['steady']:>9.3f} {r['steady_merge']:>7.3f} "
            f"{r['steady_score']:>9.3f} {r['wall_per_eval']:>12.2f}"
        )
    print(f"load average: {load:.1f} on {os.cpu_count()} cores")
    Path(args.json).write_text(
        json.dumps({"rows": rows, "load": round(load, 2), "cores": os.cpu_count()}, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
