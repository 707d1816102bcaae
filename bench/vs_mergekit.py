"""mergebuild against mergekit 0.1.5 on the same merges: cold time, peak RSS, cache and write bytes.

Models come from ``bench/build_bench.py`` (Llama-shaped bf16, seeded; ``--layers 16 --hidden
1024`` is the 4 x 0.5 GB set, ``--layers 16 --hidden 3072`` ... see ``--big``). mergekit runs
from the throwaway virtualenv ``bench/.venv-mergekit`` (created with ``--install`` when
missing; never the project's environment). For every recipe and every repeat the two tools run
back to back, alternating which goes first, each with a fresh output (and, for mergebuild, a
fresh cache), inputs in the page cache. Reported per recipe, as medians over the repeats with
their spread (min-max): the cold-time ratio mergebuild / mergekit, the peak-RSS ratio, cache
bytes / output bytes, bytes written / output bytes (the output's files plus the cache's, which
is everything a cold build writes), and for mergebuild a weight edit / cold (every weight
scaled), a one-layer edit of that / cold (one model's weight on layer 7), and back / cold (the
cold recipe again: what the cache kept of it). Ratios only: the machine is shared.

    .venv/bin/python bench/vs_mergekit.py [--layers 16] [--hidden 1024] [--repeats 3]
                                          [--recipes ties dare_ties ...] [-j 2] [--install]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from build_bench import TIMER, WORK, make_model, mergebuild_command  # noqa: E402

MK_VENV = ROOT / ".venv-mergekit"
MK_VERSION = "0.1.5"
N_MODELS = 4  # a base and three others

# recipe -> (method, per-model parameters of the i-th non-base model, global parameters)
RECIPES: dict[str, tuple[str, list[dict], dict]] = {
    "linear": ("linear", [{"weight": w} for w in (0.4, 0.3, 0.2)], {}),
    "task_arithmetic": ("task_arithmetic", [{"weight": w} for w in (0.5, 0.3, 0.2)], {}),
    "ties": ("ties", [{"weight": w, "density": 0.5} for w in (0.5, 0.3, 0.2)], {}),
    "dare_ties": ("dare_ties", [{"weight": w, "density": 0.5} for w in (0.5, 0.3, 0.2)], {}),
    "della": ("della", [{"weight": w, "density": 0.5, "epsilon": 0.1} for w in (0.5, 0.3, 0.2)], {}),
    "breadcrumbs_ties": (
        "breadcrumbs_ties",
        [{"weight": w, "density": 0.5, "gamma": 0.01} for w in (0.5, 0.3, 0.2)],
        {},
    ),
    "sce": ("sce", [{} for _ in range(3)], {"select_topk": 0.5}),
    "model_stock": ("model_stock", [{} for _ in range(3)], {}),
    "slerp": ("slerp", [{}], {"t": 0.4}),
}


def install_mergekit() -> None:
    """A throwaway virtualenv with mergekit 0.1.5 under bench/ (git-ignored)."""
    subprocess.run([sys.executable, "-m", "venv", str(MK_VENV)], check=True)
    # torch pinned as the project's: a bare requirement can pull a multi-GB CUDA build
    pip = [str(MK_VENV / "bin" / "pip"), "install", "-q"]
    subprocess.run([*pip, f"mergekit=={MK_VERSION}", "torch==2.13.0"], check=True)


def yaml_for(recipe: str, models: list[Path], weight_scale: float = 1.0, layer_edit: float | None = None) -> str:
    """The mergekit YAML of a recipe (mergebuild reads the same file with --config).

    ``weight_scale`` multiplies every weight (a weight edit); ``layer_edit`` gives layer 7 of
    the first model another weight (a one-layer edit) through a filtered parameter list.
    """
    method, per_model, params = RECIPES[recipe]
    lines = [f"merge_method: {method}", "dtype: bfloat16"]
    if method != "linear":
        lines.append(f"base_model: {models[0]}")
    lines.append("models:")
    if method != "linear":
        lines.append(f"  - model: {models[0]}")
    for i, pm in enumerate(per_model):
        lines.append(f"  - model: {models[i + 1]}")
        if pm:
            lines.append("    parameters:")
            for k, v in pm.items():
                if k == "weight":
                    v = v * weight_scale
                    if i == 0 and layer_edit is not None:
                        lines.append(
                            f"      {k}:\n        - filter: layers.7.\n          value: {layer_edit}\n"
                            f"        - value: {v}"
                        )
                        continue
                lines.append(f"      {k}: {v}")
    if params:
        lines.append("parameters:")
        lines += [f"  {k}: {v}" for k, v in params.items()]
    return "\n".join(lines) + "\n"


def timed(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KB) of one command, measured by a small process of its own.

    Dirty pages of the previous command are flushed first: on the 3.1 GB set its write-back
    would otherwise be billed to the next command (a weight edit run right after a cold build
    measured 1.54× the cold build this way).
    """
    os.sync()
    r = subprocess.run(
        [sys.executable, "-c", TIMER, *cmd], cwd=cwd, capture_output=True, text=True, env=os.environ | (env or {})
    )
    if r.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    _, rss, dt = [ln for ln in r.stderr.splitlines() if ln.startswith("MAXRSS")][-1].split()
    return float(dt), int(rss)


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def out_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


MB_ENV = {"MERGEBUILD_SERVER": "off"}


def run_mergekit(case: Path, cfg: Path, jobs: int) -> tuple[float, int]:
    shutil.rmtree(case / "mk-out", ignore_errors=True)
    # mergekit has no -j: it runs one task at a time on torch's intra-op threads (all cores)
    cmd = [
        str(MK_VENV / "bin" / "mergekit-yaml"),
        str(cfg),
        str(case / "mk-out"),
        "--no-copy-tokenizer",
        "--lazy-unpickle",
        "--quiet",
    ]
    return timed(cmd, case)


def run_mergebuild(case: Path, cfg: Path, jobs: int, fresh: bool) -> tuple[float, int]:
    if fresh:
        shutil.rmtree(case / "mb-out", ignore_errors=True)
        shutil.rmtree(case / "cache", ignore_errors=True)
    cmd = [
        *mergebuild_command(),
        "--quiet",
        "--cache-dir",
        str(case / "cache"),
        "-j",
        str(jobs),
        "--config",
        str(cfg),
        "mb-out",
    ]
    return timed(cmd, case, MB_ENV)


FLOOR = """
import sys, os, pathlib
out, n, files = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
for f in files:
    pathlib.Path(f).read_bytes()
chunk = bytes(16 << 20)
with open(out, "wb") as fh:
    while n > 0:
        fh.write(chunk[:min(n, len(chunk))])
        n -= len(chunk)
os.unlink(out)
"""


def disk_floor(case: Path, models: list[Path], nbytes: int) -> float:
    """The disk floor of one build: a fresh Python process reads every input file (from the page
    cache) and writes the output's bytes (no torch: the floor of any tool on this machine)."""
    files = [str(f) for m in models for f in sorted(m.glob("*.safetensors"))]
    t, _ = timed([sys.executable, "-c", FLOOR, str(case / "floor.bin"), str(nbytes), *files], case)
    return t


def bench_recipe(recipe: str, case: Path, models: list[Path], jobs: int, repeats: int) -> dict:
    """Alternating cold builds of both tools, then mergebuild's weight and one-layer edits."""
    cfg = case / f"{recipe}.yml"
    runs: dict[str, list[float]] = {
        k: []
        for k in (
            "mk_s",
            "mb_s",
            "mk_rss",
            "mb_rss",
            "cache_x",
            "written_x",
            "weight_edit_x",
            "layer_edit_x",
            "floor_s",
        )
    }
    for r in range(repeats):
        cfg.write_text(yaml_for(recipe, models))
        order = ("mk", "mb") if r % 2 == 0 else ("mb", "mk")
        for tool in order:
            if tool == "mk":
                t, rss = run_mergekit(case, cfg, jobs)
            else:
                t, rss = run_mergebuild(case, cfg, jobs, fresh=True)
                ob = out_bytes(case / "mb-out")
                cache = tree_bytes(case / "cache" / "blobs")
                runs["cache_x"].append(cache / ob)
                runs["written_x"].append((ob + cache) / ob)
                mb_cold = t
                used = models if RECIPES[recipe][0] != "linear" else models[1:]
                runs["floor_s"].append(disk_floor(case, used, ob))
            runs[f"{tool}_s"].append(t)
            runs[f"{tool}_rss"].append(rss)
        scale = 1.5 + r / 10
        cfg.write_text(yaml_for(recipe, models, weight_scale=scale))
        time.sleep(0.05)
        t, _ = run_mergebuild(case, cfg, jobs, fresh=False)
        runs["weight_edit_x"].append(t / mb_cold)
        runs.setdefault("weight_edit_floor", []).append(t / runs["floor_s"][-1])
        # one layer of the weight-edited recipe edited: every other tensor is unchanged (until
        # 2026-12-04 this edit also moved every weight back to the cold recipe's, a toggle)
        cfg.write_text(yaml_for(recipe, models, weight_scale=scale, layer_edit=0.05 + r / 100))
        time.sleep(0.05)
        t, _ = run_mergebuild(case, cfg, jobs, fresh=False)
        runs["layer_edit_x"].append(t / mb_cold)
        cfg.write_text(yaml_for(recipe, models))  # back to the cold recipe: what the cache kept of it
        time.sleep(0.05)
        t, _ = run_mergebuild(case, cfg, jobs, fresh=False)
        runs.setdefault("back_x", []).append(t / mb_cold)
    ratio = [b / a for a, b in zip(runs["mk_s"], runs["mb_s"])]
    rss = [b / a for a, b in zip(runs["mk_rss"], runs["mb_rss"])]
    out = {
        "recipe": recipe,
        "repeats": repeats,
        "mk_s": runs["mk_s"],
        "mb_s": runs["mb_s"],
        "cold_ratio": _summary(ratio),
        "rss_ratio": _summary(rss),
        "mk_rss_mb": max(runs["mk_rss"]) / 1024,
        "mb_rss_mb": max(runs["mb_rss"]) / 1024,
        "floor_s": runs["floor_s"],
        "cold_floor": _summary([b / f for b, f in zip(runs["mb_s"], runs["floor_s"])]),
        "weight_edit_floor": _summary(runs["weight_edit_floor"]),
    }
    for k in ("cache_x", "written_x", "weight_edit_x", "layer_edit_x", "back_x"):
        out[k] = _summary(runs[k])
    return out


def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def fmt(s: dict) -> str:
    return f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("-j", "--jobs", type=int, default=2)
    ap.add_argument("--recipes", nargs="*", default=list(RECIPES))
    ap.add_argument("--install", action="store_true", help="create bench/.venv-mergekit if missing")
    args = ap.parse_args()
    if not (MK_VENV / "bin" / "mergekit-yaml").exists():
        if not args.install:
            raise SystemExit(f"{MK_VENV} has no mergekit: run with --install")
        install_mergekit()
    inter, vocab = int(args.hidden * 2.75), 32000
    mdir = WORK / f"models-L{args.layers}-H{args.hidden}"
    models = [mdir / f"m{i}" for i in range(N_MODELS)]
    for i, m in enumerate(models):
        make_model(m, seed=i, layers=args.layers, hidden=args.hidden, inter=inter, vocab=vocab, base=None)
    # mergebuild byte-compiled, as mergekit's pip install is (an editable install under
    # PYTHONDONTWRITEBYTECODE would compile its sources in every timed process)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT.parent / "mergefile")], check=True)
    for m in models:  # into the page cache: both tools then read from memory
        for f in m.glob("*.safetensors"):
            f.read_bytes()
    case = WORK / f"vs-mergekit-L{args.layers}-H{args.hidden}"
    shutil.rmtree(case, ignore_errors=True)
    case.mkdir(parents=True)
    results = []
    print(
        f"{'recipe':18s} {'cold mb/mk':>18s} {'RSS mb/mk':>18s} {'cache/out':>18s} {'written/out':>18s} "
        f"{'weight edit/cold':>18s} {'layer edit/cold':>18s} {'back/cold':>18s} {'cold/floor':>18s} {'w.edit/floor':>18s}",
        flush=True,
    )
    path = ROOT / f"last_vs_mergekit_L{args.layers}_H{args.hidden}.json"
    kept = json.loads(path.read_text())["results"] if path.exists() else []

    def save() -> None:
        """The rows so far, with the other recipes' earlier rows (each row says when it ran):
        written after every recipe, so an interrupted run keeps what it measured."""
        ran = {r["recipe"] for r in results}
        summary = {
            "layers": args.layers,
            "hidden": args.hidden,
            "jobs": args.jobs,
            "models": N_MODELS,
            "load_at_start": load,
            "results": [r for r in kept if r["recipe"] not in ran] + results,
        }
        path.write_text(json.dumps(summary, indent=2))

    load = os.getloadavg()
    for recipe in args.recipes:
        res = bench_recipe(recipe, case, models, args.jobs, args.repeats)
        res["date"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
        results.append(res)
        save()
        print(
            f"{recipe:18s} {fmt(res['cold_ratio']):>18s} {fmt(res['rss_ratio']):>18s} {fmt(res['cache_x']):>18s} "
            f"{fmt(res['written_x']):>18s} {fmt(res['weight_edit_x']):>18s} {fmt(res['layer_edit_x']):>18s}"
            f" {fmt(res['back_x']):>18s}"
            f" {fmt(res['cold_floor']):>18s} {fmt(res['weight_edit_floor']):>18s}"
            f"   mk {statistics.median(res['mk_s']):.1f} s {res['mk_rss_mb']:.0f} MB,"
            f" mb {statistics.median(res['mb_s']):.1f} s {res['mb_rss_mb']:.0f} MB",
            flush=True,
        )
    shutil.rmtree(case, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
