"""``mergebuild evolve GENOME.yml --storage-path DIR``: evolutionary merge search (mergekit-evolve).

The mergekit-evolve configuration file is accepted unchanged, and so are its options (every one
of ``mergekit-evolve --help``; the differences are in ``docs/evolve.md``). Ray is started here
(a local Ray with ``--num-cpus``, or ``--ray-address`` to join a cluster) and only when some
candidate is not already in the score cache. What the options need from the machine (CUDA,
bitsandbytes, wandb) is checked before anything else runs (``targets/evolve/preflight.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from mergefile.errors import UserError

EVILS = "--i-understand-the-depths-of-the-evils-i-am-unleashing"


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a batch size: {text!r} (an integer or auto)") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    from mergefile.cli.main import parse_size

    p.add_argument("genome", metavar="GENOME_CONFIG_PATH", help="mergekit-evolve YAML (genome: + tasks:)")
    p.add_argument("--storage-path", required=True, help="checkpoint, history, best recipe, candidates and plot")
    p.add_argument("--max-fevals", type=int, default=100, help="evaluations in all (a hard cap; default 100)")
    p.add_argument("--sigma0", type=float, default=1 / 6, help="initial CMA-ES step size (default 1/6)")
    p.add_argument("--force-population-size", type=int, default=None, metavar="N", help="CMA-ES population size")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="stop after this long (resumable)")
    p.add_argument("--vllm", action=argparse.BooleanOptionalAction, default=False, help="score with vLLM (default: hf)")
    p.add_argument(
        "-s", "--strategy", choices=("pool", "buffered", "serial"), default="pool", help="Ray scheduling (default pool)"
    )
    p.add_argument(
        "--in-memory",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="keep one model resident and overwrite its weights per candidate (pool only)",
    )
    p.add_argument("--num-gpus", type=int, default=0, help="GPUs to use (0: CPU only; ignored without CUDA)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--workers", type=int, default=None, help="candidates evaluated at once (default: GPUs, else CPUs)")
    p.add_argument("--ray-address", default=None, metavar="ADDR", help="join this Ray cluster (default: a local Ray)")
    p.add_argument("--random-seed", type=int, default=0, help="seed of CMA-ES, random_init and shuffle (default 0)")
    p.add_argument("--batch-size", type=_batch_size, default=None, help="lm-eval batch size (default 8; vLLM: auto)")
    p.add_argument(
        "--task-search-path",
        action="append",
        default=[],
        metavar="DIR",
        help="folder of custom lm-eval task YAMLs (repeatable)",
    )
    p.add_argument(
        "--save-final-model",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="build the best candidate into STORAGE/final_model at the end (default on)",
    )
    p.add_argument(
        "--allow-crimes",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="merge models of different architectures",
    )
    p.add_argument(
        "--trust-remote-code",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="let transformers run model code from the hub",
    )
    p.add_argument("--allow-pickle", action="store_true", help="read pickled .bin weights (weights-only loading)")
    p.add_argument("--device", default="cpu", help="where candidates are evaluated (and merged): cpu or cuda[:N]")
    p.add_argument(
        "--merge-cuda",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="merge candidates on the GPU (--no-merge-cuda: on the CPU); default: on --device",
    )
    p.add_argument(
        "--reshard",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="copy the input models once into STORAGE/input_models, one safetensors file each, "
        "and merge from those (default on)",
    )
    quant = p.add_mutually_exclusive_group()
    quant.add_argument(
        "--load-in-8bit",
        dest="quantization",
        action="store_const",
        const="8bit",
        default=None,
        help="evaluate each candidate quantized to 8 bits (bitsandbytes; CUDA)",
    )
    quant.add_argument(
        "--load-in-4bit",
        dest="quantization",
        action="store_const",
        const="4bit",
        help="evaluate each candidate quantized to 4 bits, NF4 (bitsandbytes; CUDA)",
    )
    p.add_argument(
        "--wandb", action=argparse.BooleanOptionalAction, default=False, help="log every evaluation to Weights & Biases"
    )
    p.add_argument("--wandb-project", default=None, help="W&B project (default mergekit-evolve)")
    p.add_argument("--wandb-entity", default=None, help="W&B entity (team or user)")
    p.add_argument(
        "--cache-dir", default=None, help="tensor and score cache (default: $MERGEBUILD_CACHE_DIR or STORAGE/cache)"
    )
    p.add_argument("--cache-size", type=parse_size, default=None, help="cache size limit (e.g. 100G)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument(
        EVILS,
        dest="allow_benchmarks",
        action="store_true",
        help="allow optimizing directly on common benchmark tasks (mmlu, gsm8k, ...)",
    )


class _RichSearchProgress:
    """One bar: evaluations done of the budget, the best score so far, the last result."""

    def __init__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        self.bar = Progress(
            TextColumn("[bold]evolve"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("evaluations"),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        self.task = None

    def start(self, total: int, done: int, best) -> None:
        self.bar.start()
        info = f"best {best:.4g}" if best is not None else ""
        self.task = self.bar.add_task("evolve", total=total, completed=min(done, total), info=info)

    def result(self, line: dict, best) -> None:
        last = "error" if line.get("error") else f"{line['score']:.4g}" + (" (cached)" if line["cached"] else "")
        self.bar.update(
            self.task, advance=1, info=f"best {best:.4g}  last {last}" if best is not None else f"last {last}"
        )

    def message(self, text: str) -> None:
        self.console.print(text)

    def end(self) -> None:
        self.bar.stop()


class _PlainSearchProgress:
    def start(self, total: int, done: int, best) -> None: ...
    def result(self, line: dict, best) -> None: ...
    def message(self, text: str) -> None: ...
    def end(self) -> None: ...


def run(args) -> int:
    from mergefile.store.store import CACHE_DIR_ENV, DEFAULT_SIZE_LIMIT, Store
    from mergefile.targets.evolve.config import check_benchmarks, load_genome_yaml
    from mergefile.targets.evolve.preflight import preflight
    from mergefile.targets.evolve.search import run_search

    config = load_genome_yaml(args.genome)
    for w in check_benchmarks(config, args.allow_benchmarks):
        print(f"mergebuild: warning: {w}", file=sys.stderr)
    for p in args.task_search_path:
        if not Path(p).is_dir():
            raise UserError(f"--task-search-path '{p}' is not a folder")
    if not args.wandb and (args.wandb_project or args.wandb_entity):
        print(
            "mergebuild: warning: --wandb-project/--wandb-entity without --wandb: nothing is logged to W&B",
            file=sys.stderr,
        )
    options = evolve_options(args)
    preflight(options)  # CUDA, bitsandbytes, wandb: before any model is read
    storage = Path(args.storage_path)
    import os

    cache = Path(args.cache_dir or os.environ.get(CACHE_DIR_ENV) or storage / "cache")
    quiet = args.quiet or not sys.stderr.isatty()
    progress = _PlainSearchProgress() if quiet else _RichSearchProgress()
    with Store(cache, args.cache_size or DEFAULT_SIZE_LIMIT) as store, contextlib.ExitStack() as stack:
        result = run_search(
            config, options, store, progress, start_ray=lazy_ray(stack, args.ray_address, args.num_cpus)
        )
    best = result.best
    print(
        f"evolve: {result.evaluations} evaluations ({result.scored} scored now, the rest cached); stop: {result.stop}"
    )
    if best is not None:
        print(f"best score {best['score']:.6g} at evaluation {best['n']}: {storage / 'best.mf'}")
    return 0


def evolve_options(args):
    """The parsed command line as :class:`~mergefile.targets.evolve.search.EvolveOptions`."""
    from mergefile.targets.evolve.search import EvolveOptions

    return EvolveOptions(
        storage_path=str(Path(args.storage_path)),
        max_fevals=args.max_fevals,
        sigma0=args.sigma0,
        popsize=args.force_population_size,
        timeout=args.timeout,
        random_seed=args.random_seed,
        strategy=args.strategy,
        in_memory=args.in_memory,
        vllm=args.vllm,
        workers=args.workers,
        num_gpus=args.num_gpus,
        batch_size=args.batch_size,
        task_search_path=tuple(args.task_search_path),
        device=args.device,
        save_final_model=args.save_final_model,
        allow_crimes=args.allow_crimes,
        allow_pickle=args.allow_pickle,
        trust_remote_code=args.trust_remote_code,
        merge_cuda=args.merge_cuda,
        reshard=args.reshard,
        quantization=args.quantization,
        wandb=args.wandb,
        wandb_project=args.wandb_project,
        wandb_entity=args.wandb_entity,
    )


def lazy_ray(stack: contextlib.ExitStack, address: str | None, num_cpus: int | None):
    """A function starting (or joining) Ray on first call, shut down when ``stack`` closes."""
    started = []

    def start() -> None:
        if not started:
            from mergefile.run.ray_executor import ray_session

            stack.enter_context(ray_session(address, num_cpus))
            started.append(True)

    return start
