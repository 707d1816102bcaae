"""Build time of the issue-19 methods (beyond mergekit), as a ratio to ``linear`` in the same run.

The setup of ``bench/methods_bench.py`` (whose helpers it uses): 3 generated bf16 Llama-shaped
models (m1, m2 = m0 + small seeded noise), one cold in-process build per method into a fresh
output folder and cache, ``linear`` timed right before each method. It adds one row for TSV's
incremental case: a rebuild after a ``weight`` edit, every per-task SVD read from the cache.
Writes its table to bench/RESULTS.md under "## Methods beyond mergekit (issue 19)" only.

    .venv/bin/python bench/new_methods_bench.py [--layers 8] [--hidden 512] [--vocab 4096] [-j 2] [--quick]
                                                [--compare-device cuda]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import methods_bench as mb  # noqa: E402

from mergefile.methods import METHODS  # noqa: E402

HEADING = "## Methods beyond mergekit (issue 19)"
RECIPES: dict[str, str] = {
    "linear": "linear { m1 weight=0.6 ; m2 weight=0.4 }",
    "tsv": "tsv(base=m0) { m1 weight=0.7 ; m2 weight=0.5 }",
    "iso_c": "iso_c(base=m0) { m1 ; m2 }",
    "iso_cts": "iso_cts(base=m0) { m1 ; m2 }",
    "consensus_ta": "consensus_ta(base=m0) { m1 weight=0.7 ; m2 weight=0.5 }",
    "consensus_ties": "consensus_ties(base=m0) { m1 ; m2 }",
    "magmax": "magmax(base=m0) { m1 ; m2 }",
    "pcb": "pcb(base=m0) { m1 ; m2 }",
    "wudi": "wudi(base=m0) { m1 ; m2 }",  # the paper's 300 Adam steps per matrix
}


def setup(layers: int, hidden: int, vocab: int):
    """Models (shared with methods_bench), a fresh case folder, the parsed recipe."""
    from mergefile.syntax import parse_mergefile

    mdir = mb.make_family(layers, hidden, vocab)
    case = mb.WORK / f"new-methods-L{layers}-H{hidden}"
    shutil.rmtree(case, ignore_errors=True)
    case.mkdir(parents=True)
    models = "\n".join(f'model m{i} = "{mdir / f"m{i}"}"' for i in range(3))
    body = "\n".join(f"out/{m}: {r}" for m, r in RECIPES.items())
    edited = RECIPES["tsv"].replace("m1 weight=0.7", "m1 weight=0.3")
    (case / "Mergefile").write_text(f"{models}\n{body}\n")
    (case / "Edited.mf").write_text(f"{models}\nout/tsv: {edited}\n")
    return mdir, case, parse_mergefile(case / "Mergefile"), parse_mergefile(case / "Edited.mf")


def tsv_weight_edit(case: Path, mf, edited, jobs: int, device: str = "cpu") -> tuple[float, int]:
    """Seconds of a TSV rebuild after a weight edit (cache kept), and its stage misses."""
    from mergefile.run.build import BuildOptions, build
    from mergefile.store.store import Store

    out, cache = case / "out" / "tsv", case / "cache" / "tsv-edit"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    with Store(cache) as store:
        build(mf, ["out/tsv"], store, BuildOptions(jobs=jobs, device=device))
        t0 = time.perf_counter()
        report = build(edited, ["out/tsv"], store, BuildOptions(jobs=jobs, device=device))
        dt = time.perf_counter() - t0
    misses = sum(t.stage_misses for t in report.targets)
    shutil.rmtree(out)
    shutil.rmtree(cache)
    return dt, misses


def run(layers: int, hidden: int, vocab: int, jobs: int) -> dict:
    assert set(RECIPES) - {"linear"} == {n for n, m in METHODS.items() if not m.mergekit}, "a method has no row"
    mdir, case, mf, edited = setup(layers, hidden, vocab)
    mb.time_target(case, mf, "linear", jobs)  # warm-up: imports, page cache
    times, refs = {}, {}
    for name in RECIPES:
        if name == "linear":
            continue
        refs[name] = mb.best_time(case, mf, "linear", jobs, budget_s=2.0, max_runs=2)
        times[name] = mb.best_time(case, mf, name, jobs)
        print(f"  {name:<16} {times[name]:7.2f} s  (linear {refs[name]:.2f} s)", flush=True)
    refs["tsv, after a weight edit"] = mb.best_time(case, mf, "linear", jobs, budget_s=2.0, max_runs=2)
    times["tsv, after a weight edit"], misses = tsv_weight_edit(case, mf, edited, jobs)
    return {
        "layers": layers,
        "hidden": hidden,
        "vocab": vocab,
        "jobs": jobs,
        "edit_stage_misses": misses,
        "model_bytes": sum(f.stat().st_size for f in (mdir / "m0").glob("*.safetensors")),
        "seconds": times,
        "linear_s": refs,
        "ratio": {m: t / refs[m] for m, t in times.items()},
        "load_avg": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }


def compare_devices(layers: int, hidden: int, vocab: int, jobs: int, device: str) -> dict:
    """Each method once on the CPU and once on ``device``, after a warm-up on each."""
    _, case, mf, _ = setup(layers, hidden, vocab)
    for dev in ("cpu", device):
        mb.time_target(case, mf, "linear", jobs, dev)
    rows = {}
    for name in RECIPES:
        cpu = mb.time_target(case, mf, name, jobs)
        other = mb.time_target(case, mf, name, jobs, device)
        rows[name] = {"cpu_s": cpu, f"{device}_s": other, "ratio": other / cpu}
        print(f"  {name:<16} cpu {cpu:7.2f} s  {device} {other:7.2f} s  x{other / cpu:.2f}", flush=True)
    return {"layers": layers, "hidden": hidden, "vocab": vocab, "device": device, "methods": rows}


def table(r: dict) -> str:
    lines = [
        HEADING,
        "",
        f"`bench/new_methods_bench.py`: the setup of `bench/methods_bench.py` (one cold in-process build "
        f"per method, fresh output and cache, `-j {r['jobs']}`, 3 generated bf16 Llama-shaped models: "
        f"{r['layers']} layers, hidden {r['hidden']}, vocab {r['vocab']}, {r['model_bytes'] / 2**20:.0f} MiB "
        f"each; best of up to 3 builds; `linear` timed right before each row). {platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, load average {r['load_avg']:.1f} on {r['cpus']} cores "
        f"at the end. The last row is a TSV rebuild after a `weight` edit with the cache kept "
        f"({r['edit_stage_misses']} stages recomputed).",
        "",
        "| method | seconds | linear before it, s | × linear |",
        "|---|---:|---:|---:|",
    ]
    for m in sorted(r["ratio"], key=lambda k: r["ratio"][k]):
        lines.append(f"| `{m}` | {r['seconds'][m]:.2f} | {r['linear_s'][m]:.2f} | {r['ratio'][m]:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("-j", "--jobs", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="tiny models, to check the script (RESULTS.md untouched)")
    ap.add_argument("--compare-device", metavar="DEV", default=None, help="CPU vs DEV (e.g. cuda); JSON only")
    args = ap.parse_args()
    if args.quick:
        args.layers, args.hidden, args.vocab = 2, 128, 1024
    if args.compare_device:
        print(
            json.dumps(compare_devices(args.layers, args.hidden, args.vocab, args.jobs, args.compare_device), indent=2)
        )
        return 0
    result = run(args.layers, args.hidden, args.vocab, args.jobs)
    text = table(result)
    print(text)
    (mb.WORK / "new_methods_last_run.json").write_text(json.dumps(result, indent=2))
    if not args.quick:
        mb.write_section(text, HEADING)
    return 0


if __name__ == "__main__":
    sys.exit(main())
