"""Executor benchmark (issue 9): the same cold build on the local executor and on a local Ray.

Generates Llama-shaped bf16 models with ``build_bench.make_model`` (default 3 models, 8 layers,
hidden 512) and builds two independent targets (linear and TIES) from scratch with each
executor, in one process, alternating, each repeat with a fresh cache and fresh outputs. Inputs
stay in the page cache for both (the first, untimed build warms it), so the ratio compares the
executors, not the disk. The linear target is also built alone: little math per tensor, so
Ray's per-task overhead shows. Ray start-up (``ray.init`` plus every worker importing torch) is timed
separately and not counted in the Ray build.

    .venv/bin/python bench/executor_bench.py [--models 3] [--layers 8] [--hidden 512] [-j 2] [--repeat 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from build_bench import WORK, make_model  # noqa: E402

RECIPE = """
dtype = float32
out_dtype = bfloat16
{models}
out/soup: linear {{
{linear}
}}
out/ties: ties(base=m0) {{
{ties}
}}
all: out/soup out/ties
"""


def _setup(n_models: int, layers: int, hidden: int) -> Path:
    mdir = WORK / f"models-L{layers}-H{hidden}"
    names = [f"m{i}" for i in range(n_models)]
    print(f"generating {n_models} models ({layers} layers, hidden {hidden}) in {mdir} ...", flush=True)
    for i, n in enumerate(names):
        make_model(mdir / n, seed=i, layers=layers, hidden=hidden, inter=int(hidden * 2.75), vocab=32000, base=None)
    case = WORK / f"executors-L{layers}-H{hidden}"
    shutil.rmtree(case, ignore_errors=True)
    case.mkdir(parents=True)
    (case / "Mergefile").write_text(
        RECIPE.format(
            models="\n".join(f'model {n} = "{mdir / n}"' for n in names),
            linear="\n".join(f"    {n} weight={1.0 + i / 10}" for i, n in enumerate(names)),
            ties="\n".join(f"    {n} weight={1.0 - i / 10} density=0.5" for i, n in enumerate(names[1:], 1)),
        )
    )
    return case


def _build(case: Path, executor, jobs: int, tag: str, goal: str = "all") -> tuple[float, int]:
    """One cold build of ``goal`` into a fresh cache and output; (seconds, tensors computed)."""
    from mergefile.run.build import BuildOptions, build
    from mergefile.store.store import Store
    from mergefile.syntax import parse_mergefile

    shutil.rmtree(case / "out", ignore_errors=True)
    shutil.rmtree(case / f"cache-{tag}", ignore_errors=True)
    mf = parse_mergefile(case / "Mergefile")
    options = BuildOptions(
        jobs=jobs, memory_budget=4 * 2**30, executor="ray" if executor.__class__.__name__ == "RayExecutor" else "local"
    )
    with Store(case / f"cache-{tag}") as store:
        t0 = time.perf_counter()
        report = build(mf, [goal], store, options, executor=executor)
        dt = time.perf_counter() - t0
    return dt, sum(t.computed for t in report.targets)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("-j", "--jobs", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small models, one repeat: to check the script")
    args = ap.parse_args()
    if args.quick:
        args.layers, args.hidden, args.repeat = 2, 256, 1
    import ray

    from mergefile.run.executor import LocalExecutor
    from mergefile.run.ray_executor import RayExecutor

    case = _setup(args.models, args.layers, args.hidden)
    t0 = time.perf_counter()
    ray.init(num_cpus=args.jobs, include_dashboard=False, log_to_driver=False)

    @ray.remote
    def warm() -> int:
        import torch

        import mergefile.run.portable  # noqa: F401

        return torch.get_num_threads()

    ray.get([warm.remote() for _ in range(args.jobs)])
    ray_start = time.perf_counter() - t0
    _build(case, LocalExecutor(args.jobs), args.jobs, "warmup")  # page cache, torch kernels
    runs: dict[str, list[float]] = {"local_j1": [], "local": [], "ray": [], "soup_local": [], "soup_ray": []}
    computed = soup = 0
    for _ in range(args.repeat):
        runs["local_j1"].append(_build(case, LocalExecutor(1), 1, "local-j1")[0])
        dt, computed = _build(case, LocalExecutor(args.jobs), args.jobs, "local")
        runs["local"].append(dt)
        runs["ray"].append(_build(case, RayExecutor(args.jobs, 4 * 2**30), args.jobs, "ray")[0])
        # linear alone: little math per tensor, so the per-task overhead of Ray shows
        dt, soup = _build(case, LocalExecutor(args.jobs), args.jobs, "local", "out/soup")
        runs["soup_local"].append(dt)
        runs["soup_ray"].append(_build(case, RayExecutor(args.jobs, 4 * 2**30), args.jobs, "ray", "out/soup")[0])
    ray.shutdown()
    med = {k: statistics.median(v) for k, v in runs.items()}
    in_bytes = sum(
        f.stat().st_size
        for f in (WORK / f"models-L{args.layers}-H{args.hidden}").rglob("*.safetensors")
        if f.parent.name in {f"m{i}" for i in range(args.models)}
    )
    result = {
        "models": args.models,
        "layers": args.layers,
        "hidden": args.hidden,
        "jobs": args.jobs,
        "repeat": args.repeat,
        "tensors_computed": computed,
        "input_bytes": in_bytes,
        "ray_startup_s": ray_start,
        "runs_s": runs,
        "median_s": med,
        "ray_over_local": med["ray"] / med["local"],
        "local_j1_over_local": med["local_j1"] / med["local"],
        "soup_tensors": soup,
        "soup_ray_over_local": med["soup_ray"] / med["soup_local"],
        "soup_ray_overhead_ms_per_tensor": 1000 * (med["soup_ray"] - med["soup_local"]) / max(1, soup),
        "ray_ms_per_tensor": 1000 * med["ray"] / max(1, computed),
        "local_ms_per_tensor": 1000 * med["local"] / max(1, computed),
    }
    print(json.dumps(result, indent=2))
    (ROOT / "last_executor_run.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
