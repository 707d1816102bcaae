"""Build-spine benchmark: cold build, no-op, one-layer edit, peak RSS, against the disk floor.

Generates Llama-shaped bf16 models (random, seeded; written directly with safetensors, so
generation is quick) under bench/work/, then times `mergebuild` subprocesses. Every figure is
reported as a ratio to another measured in the same run, because this machine is noisy.
Page cache is dropped for the inputs (posix_fadvise DONTNEED) before the floor and before the
cold build, so both start from disk. Every figure is taken ``--repeats`` times (default 3; the
floor once before the first cold build and once after each) and the median is reported, since
this VM's disk speed drifts by up to 2x between minutes. The no-op is timed twice: as a user
meets it (answered by the up-to-date stamp the cold build left) and with the stamps deleted
(the full check).

    .venv/bin/python bench/build_bench.py [--layers 16] [--hidden 1024] [--models 4] [--quick]
                                          [--device cpu] [--also-device cuda]
                                          [--compare-read-once] [--server] [--repeats 3]

``--server`` adds, in the same run, the big case built through a resident build server
(``mergebuild server start`` first, not timed; docs/server.md): torch and mergebuild are then
imported once, not by every build. Its peak RSS is the forked build's, not reported.

``--also-device cuda`` (on a GPU machine) adds, in the same run, one more cold build of the big
case on that device (fresh output and cache) and reports its time as a ratio to the first.
``--compare-read-once`` instead times two cold builds of the case: inputs hashed first, then
merged (``MERGEBUILD_READ_ONCE=never``), against keyed as read (``always``); it matters when
the inputs exceed the page cache, e.g. ``--layers 80 --hidden 2048`` (4 x 7.5 GB) on 24 GB.
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

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent
WORK = ROOT / "work"


def make_model(path: Path, seed: int, layers: int, hidden: int, inter: int, vocab: int, base: Path | None) -> None:
    if (path / "config.json").exists():
        return
    path.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    kv = hidden // 4

    def rnd(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)

    def write(name: str, tensors: dict) -> None:
        save_file(tensors, str(path / name), metadata={"format": "pt"})

    shards: dict[str, str] = {}
    pre = {"model.embed_tokens.weight": rnd(vocab, hidden)}
    write("model-pre.safetensors", pre)
    shards.update({k: "model-pre.safetensors" for k in pre})
    for i in range(layers):
        p = f"model.layers.{i}."
        t = {
            p + "self_attn.q_proj.weight": rnd(hidden, hidden),
            p + "self_attn.k_proj.weight": rnd(kv, hidden),
            p + "self_attn.v_proj.weight": rnd(kv, hidden),
            p + "self_attn.o_proj.weight": rnd(hidden, hidden),
            p + "mlp.gate_proj.weight": rnd(inter, hidden),
            p + "mlp.up_proj.weight": rnd(inter, hidden),
            p + "mlp.down_proj.weight": rnd(hidden, inter),
            p + "input_layernorm.weight": torch.ones(hidden, dtype=torch.bfloat16),
            p + "post_attention_layernorm.weight": torch.ones(hidden, dtype=torch.bfloat16),
        }
        name = f"model-layer{i:03d}.safetensors"
        write(name, t)
        shards.update({k: name for k in t})
    post = {"model.norm.weight": torch.ones(hidden, dtype=torch.bfloat16), "lm_head.weight": rnd(vocab, hidden)}
    write("model-post.safetensors", post)
    shards.update({k: "model-post.safetensors" for k in post})
    total = sum((path / f).stat().st_size for f in set(shards.values()))
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": shards})
    )
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "vocab_size": vocab,
        "torch_dtype": "bfloat16",
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": False,
    }
    (path / "config.json").write_text(json.dumps(cfg, indent=2))


def drop_cache(paths: list[Path]) -> None:
    for p in paths:
        for f in p.rglob("*"):
            if f.is_file():
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def disk_floor(inputs: list[Path], out_bytes: int, scratch: Path) -> float:
    """Plain read of every input byte + write (and fsync) of the output's bytes."""
    os.sync()  # no write-back of earlier work (model generation, a previous build) in the timing
    drop_cache(inputs)
    t0 = time.perf_counter()
    buf = bytearray(16 * 2**20)
    for p in inputs:
        for f in sorted(p.glob("*.safetensors")):
            with open(f, "rb", buffering=0) as fh:
                while fh.readinto(buf):
                    pass
    scratch.mkdir(parents=True, exist_ok=True)
    with open(scratch / "floor.bin", "wb") as fh:
        left = out_bytes
        while left > 0:
            n = min(left, len(buf))
            fh.write(memoryview(buf)[:n])
            left -= n
        fh.flush()
        os.fsync(fh.fileno())
    dt = time.perf_counter() - t0
    (scratch / "floor.bin").unlink()
    return dt


def mergebuild_command() -> list[str]:
    """The installed console script, or the module where none is (a machine with only PYTHONPATH)."""
    exe = Path(sys.executable).parent / "mergebuild"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "mergefile.cli.main"]


# Runs one command and reports its wall time and peak RSS on stderr's last line. A small process
# of its own, so the RSS is the command's alone: a child forked straight from this (big) process
# would start its peak at this one's RSS. Like /usr/bin/time, which a bare machine may lack.
TIMER = (
    "import resource, subprocess, sys, time\n"
    "t0 = time.perf_counter(); rc = subprocess.call(sys.argv[1:]); dt = time.perf_counter() - t0\n"
    "sys.stderr.write(f'\\nMAXRSS {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss} {dt}\\n'); sys.exit(rc)"
)


def mergebuild(cwd: Path, *args: str) -> tuple[float, int, str]:
    """Wall seconds and peak RSS (KB) of one mergebuild process (through a server: the client's)."""
    r = subprocess.run(
        [sys.executable, "-c", TIMER, *mergebuild_command(), "--quiet", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=os.environ | SERVER_ENV,
    )
    if r.returncode != 0:
        raise SystemExit(f"mergebuild failed: {r.stderr}")
    _, rss, dt = [line for line in r.stderr.splitlines() if line.startswith("MAXRSS")][-1].split()
    return float(dt), int(rss), r.stdout


# The environment of every timed build: in-process unless a server case sets it (``--server``).
SERVER_ENV: dict[str, str] = {"MERGEBUILD_SERVER": "off"}


def server(action: str) -> None:
    """``mergebuild server start|stop`` in its own folder under bench/work."""
    exe = Path(sys.executable).parent / "mergebuild"
    if not exe.exists():
        raise SystemExit("--server needs the mergebuild console script (pip install -e .)")
    env = os.environ | {"MERGEBUILD_SERVER_DIR": str(WORK / "server")}
    subprocess.run([str(exe), "server", action], check=True, env=env)


RECIPE = """
dtype = float32
out_dtype = bfloat16
{models}
out/merged: linear {{
{sources}
}}
"""


def startup_costs() -> dict:
    """Fixed costs every build pays: Python + mergebuild's planning imports, and torch's import."""
    out = {}
    for name, code in (
        ("import_mergebuild_s", "import mergefile.cli.main, mergefile.run.build"),
        ("import_torch_s", "import torch"),
    ):
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            best = min(best, time.perf_counter() - t0)
        out[name] = best
    return out


def setup_case(layers: int, hidden: int, n_models: int, name: str = "case") -> tuple[Path, list[Path], Path]:
    """Generate (once) the models and write a fresh case folder with the bench recipe."""
    inter = int(hidden * 2.75)
    vocab = 32000
    mdir = WORK / f"models-L{layers}-H{hidden}"
    names = [f"m{i}" for i in range(n_models)]
    print(f"generating {n_models} models ({layers} layers, hidden {hidden}) in {mdir} ...", flush=True)
    for i, n in enumerate(names):
        make_model(mdir / n, seed=i, layers=layers, hidden=hidden, inter=inter, vocab=vocab, base=None)
    case = WORK / f"{name}-L{layers}-H{hidden}"
    shutil.rmtree(case, ignore_errors=True)
    case.mkdir(parents=True)
    models = "\n".join(f'model {n} = "{mdir / n}"' for n in names)
    sources = "\n".join(f"    {n} weight={1.0 + i / 10}" for i, n in enumerate(names))
    mf = case / "Mergefile"
    mf.write_text(RECIPE.format(models=models, sources=sources))
    return case, [mdir / n for n in names], mf


def run_case(
    layers: int, hidden: int, n_models: int, jobs: int, device: str = "cpu", name: str = "case", repeats: int = 1
) -> dict:
    """Floor, cold, no-op (stamped and full check) and one-layer edit, ``repeats`` times; each
    figure is the median of its runs and each ratio a ratio of medians (one run swings by up to
    2x on this VM's disk)."""
    case, inputs, mf = setup_case(layers, hidden, n_models, name)
    recipe = mf.read_text()
    in_bytes = sum(f.stat().st_size for p in inputs for f in p.glob("*.safetensors"))
    out_bytes = in_bytes // n_models
    flags = ("-j", str(jobs), "--device", device)
    runs: dict[str, list] = {
        k: [] for k in ("floor", "cold", "noop", "noop_full", "edit", "cold_rss", "noop_rss", "edit_rss")
    }
    runs["floor"].append(disk_floor(inputs, out_bytes, case / "scratch"))
    for r in range(repeats):
        shutil.rmtree(case / "out", ignore_errors=True)
        shutil.rmtree(case / "cache", ignore_errors=True)
        mf.write_text(recipe)
        time.sleep(0.1)  # older than the racy window when the cold build stamps
        os.sync()
        drop_cache(inputs)
        cold, rss, _ = mergebuild(case, *flags)
        runs["cold"].append(cold)
        runs["cold_rss"].append(rss)
        # the floor again, right after: this VM's disk speed drifts from minute to minute
        runs["floor"].append(disk_floor(inputs, out_bytes, case / "scratch"))
        noop, rss, out = mergebuild(case, *flags)  # answered by the stamp the cold build left
        assert "up to date" in out, out
        runs["noop"].append(noop)
        runs["noop_rss"].append(rss)
        shutil.rmtree(case / "cache" / "stamps")
        noop_full, _, out = mergebuild(case, *flags)  # no stamp: parse, plan, key, compare
        assert "up to date" in out, out
        runs["noop_full"].append(noop_full)
        mf.write_text(recipe.replace("    m0 weight=1.0", f'    m0 weight=1.0 weight["layers.7."]={0.5 + r / 10}'))
        edit, rss, out = mergebuild(case, *flags)
        runs["edit"].append(edit)
        runs["edit_rss"].append(rss)
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "layers": layers,
        "hidden": hidden,
        "models": n_models,
        "jobs": jobs,
        "device": device,
        "repeats": repeats,
        "input_bytes": in_bytes,
        "floor_s": med["floor"],
        "floor_runs_s": runs["floor"],
        "cold_s": med["cold"],
        "cold_runs_s": runs["cold"],
        "noop_s": med["noop"],
        "noop_runs_s": runs["noop"],
        "noop_full_s": med["noop_full"],
        "edit_s": med["edit"],
        "edit_runs_s": runs["edit"],
        "noop_full_over_cold": med["noop_full"] / med["cold"],
        "cold_rss_kb": max(runs["cold_rss"]),
        "noop_rss_kb": max(runs["noop_rss"]),
        "edit_rss_kb": max(runs["edit_rss"]),
        "noop_over_cold": med["noop"] / med["cold"],
        "edit_over_cold": med["edit"] / med["cold"],
        "cold_over_floor": med["cold"] / med["floor"],
    }


def read_once_compare(layers: int, hidden: int, n_models: int, jobs: int, device: str = "cpu") -> dict:
    """Cold builds that hash every input first (``MERGEBUILD_READ_ONCE=never``) against ones that
    key each tensor as they read it (``always``), alternating, page cache dropped before each.
    The difference shows when the inputs exceed the page cache (``mem_available``)."""
    from mergefile.run.deferred import page_cache_bytes

    case, inputs, _ = setup_case(layers, hidden, n_models, "readonce")
    in_bytes = sum(f.stat().st_size for p in inputs for f in p.glob("*.safetensors"))
    floor = disk_floor(inputs, in_bytes // n_models, case / "scratch")
    out = {
        "layers": layers,
        "hidden": hidden,
        "models": n_models,
        "jobs": jobs,
        "input_bytes": in_bytes,
        "mem_available": page_cache_bytes(),
        "floor_s": floor,
        "runs": [],
    }
    for mode in ("never", "always"):
        shutil.rmtree(case / "out", ignore_errors=True)
        shutil.rmtree(case / "cache", ignore_errors=True)
        os.sync()
        drop_cache(inputs)
        os.environ["MERGEBUILD_READ_ONCE"] = mode
        try:
            t, rss, _ = mergebuild(case, "-j", str(jobs), "--device", device)
        finally:
            os.environ.pop("MERGEBUILD_READ_ONCE", None)
        out["runs"].append({"mode": mode, "cold_s": t, "rss_kb": rss, "cold_over_floor": t / floor})
        print(f"  {mode:<6} cold {t:.1f} s  ({t / floor:.2f} x floor {floor:.1f} s)", flush=True)
    never, always = out["runs"]
    out["always_over_never"] = always["cold_s"] / never["cold_s"]
    shutil.rmtree(case / "out", ignore_errors=True)  # the outputs of a big case are big
    shutil.rmtree(case / "cache", ignore_errors=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("-j", "--jobs", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="small models, to check the script")
    ap.add_argument("--device", default="cpu", help="--device of every build (cpu or cuda)")
    ap.add_argument(
        "--also-device",
        default=None,
        metavar="DEV",
        help="one more cold build of the big case on DEV, as a ratio to --device's",
    )
    ap.add_argument("--repeats", type=int, default=3, help="runs of every figure; medians are reported (default 3)")
    ap.add_argument(
        "--server", action="store_true", help="also build the big case through a resident build server (docs/server.md)"
    )
    ap.add_argument(
        "--compare-read-once",
        action="store_true",
        help="only: cold builds hashing first vs reading once (MERGEBUILD_READ_ONCE), on these models",
    )
    args = ap.parse_args()
    if args.quick:
        args.hidden, args.layers = 256, 4
    if args.compare_read_once:
        result = read_once_compare(args.layers, args.hidden, args.models, args.jobs, args.device)
        print(json.dumps(result, indent=2))
        (ROOT / "last_read_once_run.json").write_text(json.dumps(result, indent=2))
        return 0
    big = run_case(args.layers, args.hidden, args.models, args.jobs, args.device, repeats=args.repeats)
    half = run_case(max(1, args.layers // 2), args.hidden, args.models, args.jobs, args.device, repeats=args.repeats)
    fixed = startup_costs()
    result = {
        "big": big,
        "half": half,
        "startup": fixed,
        "rss_ratio_big_over_half": big["cold_rss_kb"] / half["cold_rss_kb"],
    }
    if args.server:
        server("start")
        SERVER_ENV.update(MERGEBUILD_SERVER="auto", MERGEBUILD_SERVER_DIR=str(WORK / "server"))
        try:
            served = run_case(args.layers, args.hidden, args.models, args.jobs, args.device, "served", args.repeats)
        finally:
            SERVER_ENV.update(MERGEBUILD_SERVER="off")
            server("stop")
        for k in ("cold_rss_kb", "noop_rss_kb", "edit_rss_kb"):
            served.pop(k)  # the client's, not the build's
        result["big_served"] = served
    if args.also_device:
        case = WORK / f"case-L{args.layers}-H{args.hidden}"
        shutil.rmtree(case / "out", ignore_errors=True)
        shutil.rmtree(case / "cache", ignore_errors=True)
        os.sync()
        drop_cache([WORK / f"models-L{args.layers}-H{args.hidden}" / f"m{i}" for i in range(args.models)])
        other, other_rss, _ = mergebuild(case, "-j", str(args.jobs), "--device", args.also_device)
        result["also_device"] = {
            "device": args.also_device,
            "cold_s": other,
            "cold_rss_kb": other_rss,
            "cold_over_first_device_cold": other / big["cold_s"],
        }
    # what the build itself costs beyond the interpreter and torch start-up (an edit needs torch)
    result["edit_minus_startup_over_cold"] = (big["edit_s"] - fixed["import_torch_s"]) / big["cold_s"]
    result["noop_full_minus_startup_over_cold"] = (big["noop_full_s"] - fixed["import_mergebuild_s"]) / big["cold_s"]
    print(json.dumps(result, indent=2))
    (ROOT / "last_run.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
