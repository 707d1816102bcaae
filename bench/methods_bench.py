"""Per-method build time, as a ratio to ``linear`` measured in the same run (issue 3).

Generates a bf16 Llama-shaped base with ``build_bench.make_model`` and fine-tunes of it (base +
small seeded noise), then builds one target per registered method in-process (torch imported
once, so process start-up does not blur the ratios), each into a fresh output folder and a fresh
cache: every tensor and every stage is computed. Inputs stay in the page cache after the warm-up,
so the figures compare compute and write cost, not disk reads. A time is the fastest of up to 3
builds (repeated while under 10 s in total); ``linear`` is timed right before each method and the
ratio is to that time, so load that drifts during the run (a shared machine) cancels out.
Writes the table to bench/RESULTS.md under "## Methods (issue 3)" (only that section).

    .venv/bin/python bench/methods_bench.py [--layers 8] [--hidden 512] [--vocab 4096] [-j 2] [--quick]
                                            [--compare-device cuda]

``--compare-device cuda`` (on a GPU machine) instead builds every method once on the CPU and once
on the GPU, and reports the GPU's time as a ratio to the CPU's (JSON; RESULTS.md untouched).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_bench import make_model  # noqa: E402

from mergefile.methods import METHODS  # noqa: E402

ROOT = Path(__file__).resolve().parent
WORK = ROOT / "work"
RESULTS = ROOT / "RESULTS.md"
HEADING = "## Methods (issue 3)"

# One target per method on m0 (base), m1, m2; the same shapes as the e2e tests' recipes.
RECIPES: dict[str, str] = {
    "linear": "linear { m1 weight=0.6 ; m2 weight=0.4 }",
    "task_arithmetic": "task_arithmetic(base=m0) { m1 weight=0.7 ; m2 weight=0.5 }",
    "ties": "ties(base=m0) { m1 weight=0.7 density=0.5 ; m2 weight=0.5 density=0.4 }",
    "dare_ties": "dare_ties(base=m0) { m1 weight=0.7 density=0.5 ; m2 weight=0.5 density=0.4 }",
    "dare_linear": "dare_linear(base=m0) { m1 weight=0.7 density=0.5 ; m2 weight=0.5 density=0.4 }",
    "breadcrumbs": "breadcrumbs(base=m0) { m1 weight=0.7 density=0.8 gamma=0.05 ; m2 weight=0.5 density=0.7 }",
    "breadcrumbs_ties": "breadcrumbs_ties(base=m0) { m1 weight=0.7 density=0.8 gamma=0.05 ; m2 weight=0.5 density=0.7 }",
    "della": "della(base=m0) { m1 weight=0.7 density=0.5 epsilon=0.1 ; m2 weight=0.5 density=0.4 }",
    "della_linear": "della_linear(base=m0) { m1 weight=0.7 density=0.5 epsilon=0.1 ; m2 weight=0.5 density=0.4 }",
    "slerp": "slerp(base=m0, t=[0, 0.5, 1]) { m1 }",
    "nuslerp": "nuslerp(base=m0) { m1 weight=0.6 ; m2 weight=0.4 }",
    "multislerp": "multislerp(base=m0) { m1 weight=1 ; m2 weight=2 }",
    "karcher": "karcher { m1 ; m2 weight=2 }",
    "sce": "sce(base=m0, select_topk=0.5) { m1 ; m2 }",
    "ram": "ram(base=m0) { m1 ; m2 }",
    "ramplus_tl": "ramplus_tl(base=m0) { m1 ; m2 }",
    "model_stock": "model_stock(base=m0) { m1 ; m2 }",
    "nearswap": "nearswap(base=m0, t=0.001) { m1 }",
    "arcee_fusion": "arcee_fusion(base=m0) { m1 }",
    "passthrough": "passthrough {{ slice m1[0:{h}] ; slice m2[{h}:{n}] }}",
}


def make_finetune(base: Path, out: Path, seed: int, scale: float = 0.002) -> None:
    """``base + scale * N(0, 1)`` for every tensor, same files and config (a fake fine-tune)."""
    if (out / "config.json").exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for f in sorted(base.glob("*.safetensors")):
        tensors = load_file(str(f))
        noisy = {k: (v.float() + scale * torch.randn(v.shape, generator=g)).to(v.dtype) for k, v in tensors.items()}
        save_file(noisy, str(out / f.name), metadata={"format": "pt"})
    for name in ("config.json", "model.safetensors.index.json"):
        shutil.copy(base / name, out / name)


def make_family(layers: int, hidden: int, vocab: int) -> Path:
    mdir = WORK / f"methods-L{layers}-H{hidden}-V{vocab}"
    make_model(mdir / "m0", seed=0, layers=layers, hidden=hidden, inter=int(hidden * 2.75), vocab=vocab, base=None)
    for i in (1, 2):
        make_finetune(mdir / "m0", mdir / f"m{i}", seed=i)
    return mdir


def write_recipe(case: Path, mdir: Path, layers: int) -> Path:
    models = "\n".join(f'model m{i} = "{mdir / f"m{i}"}"' for i in range(3))
    body = "\n".join(
        f"out/{m}: " + (r.format(h=layers // 2, n=layers) if m == "passthrough" else r) for m, r in RECIPES.items()
    )
    path = case / "Mergefile"
    path.write_text(f"{models}\n{body}\n")
    return path


def time_target(case: Path, mf, name: str, jobs: int, device: str = "cpu") -> float:
    """Wall seconds of one cold build of ``out/<name>`` (fresh output folder and cache)."""
    from mergefile.run.build import BuildOptions, build
    from mergefile.store.store import Store

    out, cache = case / "out" / name, case / "cache" / name
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    with Store(cache) as store:
        t0 = time.perf_counter()
        report = build(mf, [f"out/{name}"], store, BuildOptions(jobs=jobs, device=device))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    assert report.targets[0].built, name
    shutil.rmtree(out)
    shutil.rmtree(cache)
    return dt


def best_time(
    case: Path, mf, name: str, jobs: int, budget_s: float = 10.0, max_runs: int = 3, device: str = "cpu"
) -> float:
    """Fastest of up to ``max_runs`` cold builds, repeated while under ``budget_s`` in total.

    Short builds are the noisy ones, so they are repeated; long ones run once (run time stays low).
    """
    runs = [time_target(case, mf, name, jobs, device)]
    while len(runs) < max_runs and sum(runs) < budget_s:
        runs.append(time_target(case, mf, name, jobs, device))
    return min(runs)


def setup(layers: int, hidden: int, vocab: int, name: str):
    """The models (generated once), a fresh case folder and its parsed recipe."""
    from mergefile.syntax import parse_mergefile

    print(f"generating 3 models ({layers} layers, hidden {hidden}, vocab {vocab}) ...", flush=True)
    mdir = make_family(layers, hidden, vocab)
    case = WORK / f"{name}-L{layers}-H{hidden}"
    shutil.rmtree(case, ignore_errors=True)
    case.mkdir(parents=True)
    return mdir, case, parse_mergefile(write_recipe(case, mdir, layers))


def run(layers: int, hidden: int, vocab: int, jobs: int) -> dict:
    mergekit_methods = {n for n, m in METHODS.items() if m.mergekit}  # the rest: new_methods_bench.py
    assert set(RECIPES) == mergekit_methods, "a mergekit method has no benchmark recipe"
    mdir, case, mf = setup(layers, hidden, vocab, "methods-case")
    time_target(case, mf, "linear", jobs)  # warm-up: imports, page cache
    times: dict[str, float] = {}
    refs: dict[str, float] = {}
    for name in RECIPES:
        if name == "linear":
            continue
        # linear right before each method: the ratio survives load that drifts during the run
        refs[name] = best_time(case, mf, "linear", jobs, budget_s=2.0, max_runs=2)
        times[name] = best_time(case, mf, name, jobs)
        print(f"  {name:<18} {times[name]:7.2f} s  (linear {refs[name]:.2f} s)", flush=True)
    lin = sorted(refs.values())
    times["linear"] = refs["linear"] = lin[len(lin) // 2]
    in_bytes = sum(f.stat().st_size for f in (mdir / "m0").glob("*.safetensors"))
    return {
        "layers": layers,
        "hidden": hidden,
        "vocab": vocab,
        "jobs": jobs,
        "model_bytes": in_bytes,
        "seconds": times,
        "linear_s": refs,
        "ratio": {m: t / refs[m] for m, t in times.items()},
        "load_avg": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }


def compare_devices(layers: int, hidden: int, vocab: int, jobs: int, device: str) -> dict:
    """Each method built on the CPU and on ``device`` in turn: the device's time as a ratio to the CPU's.

    Cold builds as above (fresh output and cache, inputs in the page cache), one of each per
    method, CPU first; a warm-up build on each device first takes the CUDA context start-up out.
    """
    mdir, case, mf = setup(layers, hidden, vocab, "methods-devices")
    for dev in ("cpu", device):
        time_target(case, mf, "linear", jobs, dev)
    rows: dict[str, dict] = {}
    for name in RECIPES:
        cpu = best_time(case, mf, name, jobs, budget_s=0, max_runs=1)
        other = best_time(case, mf, name, jobs, budget_s=0, max_runs=1, device=device)
        rows[name] = {"cpu_s": cpu, f"{device}_s": other, "ratio": other / cpu}
        print(f"  {name:<18} cpu {cpu:7.2f} s  {device} {other:7.2f} s  x{other / cpu:.2f}", flush=True)
    in_bytes = sum(f.stat().st_size for f in (mdir / "m0").glob("*.safetensors"))
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else device
    return {
        "layers": layers,
        "hidden": hidden,
        "vocab": vocab,
        "jobs": jobs,
        "model_bytes": in_bytes,
        "device": device,
        "device_name": gpu,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "methods": rows,
    }


def table(result: dict) -> str:
    """The RESULTS.md section: setup line, then methods sorted by ratio."""
    r = result
    lines = [
        HEADING,
        "",
        f"`bench/methods_bench.py`: one cold build per method (fresh output and cache), in-process, "
        f"`-j {r['jobs']}`, on 3 generated bf16 Llama-shaped models ({r['layers']} layers, hidden "
        f"{r['hidden']}, vocab {r['vocab']}, {r['model_bytes'] / 2**20:.0f} MiB each; m1, m2 = m0 + noise), "
        f"inputs in the page cache. {platform.machine()}, {torch.get_num_threads()} torch threads. "
        "A time is the fastest of up to 3 builds (repeated while under 10 s in total); `linear` is "
        "timed (best of 2) right before each method and the ratio is to that time (the `linear` "
        "row shows the median). Staged methods also write one stage blob per model and tensor. "
        f"Load average at the end of the run: {r['load_avg']:.1f} on {r['cpus']} cores.",
        "",
        "| method | seconds | linear before it, s | × linear |",
        "|---|---:|---:|---:|",
    ]
    for m in sorted(r["ratio"], key=lambda k: r["ratio"][k]):
        lines.append(f"| `{m}` | {r['seconds'][m]:.2f} | {r['linear_s'][m]:.2f} | {r['ratio'][m]:.2f} |")
    return "\n".join(lines) + "\n"


def write_section(text: str, heading: str = HEADING) -> None:
    """Replace (or append) only this benchmark's section (``heading``) of bench/RESULTS.md."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    start = old.find(heading)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        nxt = old.find("\n## ", start + len(heading))
        new = old[:start] + text + ("\n" + old[nxt + 1 :] if nxt >= 0 else "")
    RESULTS.write_text(new)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("-j", "--jobs", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="tiny models, to check the script (RESULTS.md untouched)")
    ap.add_argument(
        "--compare-device",
        metavar="DEV",
        default=None,
        help="time every method on the CPU and on DEV (e.g. cuda); JSON only, RESULTS.md untouched",
    )
    args = ap.parse_args()
    if args.quick:
        args.layers, args.hidden, args.vocab = 2, 128, 1024
    if args.compare_device:
        result = compare_devices(args.layers, args.hidden, args.vocab, args.jobs, args.compare_device)
        print(json.dumps(result, indent=2))
        (WORK / "methods_devices_last_run.json").write_text(json.dumps(result, indent=2))
        return 0
    result = run(args.layers, args.hidden, args.vocab, args.jobs)
    text = table(result)
    print(text)
    (WORK / "methods_last_run.json").write_text(json.dumps(result, indent=2))
    if not args.quick:
        write_section(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
