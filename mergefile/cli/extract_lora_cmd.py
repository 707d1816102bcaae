"""``mergebuild extract-lora FINETUNED BASE OUT --rank R``: mergekit-extract-lora as a one-target build.

The arguments become one ``lora(...)`` target (``out: lora(finetuned=..., base=..., rank=R)``)
built by the ordinary build: cached per-module SVDs, manifest, atomic publish. Running it again
with another ``--rank-pattern`` recomputes only the modules whose rank changed.

Example:
    mergebuild extract-lora ./math ./base out/math-lora --rank 32 --rank-pattern self_attn=8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mergefile.cli.main import (
    add_recipe_options,
    enter_directory,
    open_store,
    parse_size,
)
from mergefile.errors import UserError

ADAPTER_FILE = "adapter_model.safetensors"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("finetuned", nargs="?", help="the fine-tuned model (folder or hub id[@revision])")
    p.add_argument("base", nargs="?", help="its base model")
    p.add_argument("out", nargs="?", help="the adapter folder to write")
    p.add_argument("--model", dest="model_opt", help="same as FINETUNED (mergekit's flag)")
    p.add_argument("--base-model", dest="base_opt", help="same as BASE")
    p.add_argument("--out-path", dest="out_opt", help="same as OUT")
    p.add_argument(
        "-r",
        "--rank",
        "--max-rank",
        dest="rank",
        type=int,
        default=None,
        help="rank of every module (default 128, mergekit's --max-rank)",
    )
    p.add_argument(
        "--rank-pattern",
        action="append",
        default=[],
        metavar="FILTER=R",
        help="rank R for modules whose name contains FILTER (repeatable)",
    )
    p.add_argument("--sv-epsilon", type=float, default=None, help="drop singular values at or below this")
    p.add_argument(
        "--distribute-scale",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="split singular values between A and B (default on)",
    )
    p.add_argument(
        "--embed-lora",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decompose embeddings and lm_head too (default off: saved in full)",
    )
    p.add_argument(
        "--save-module", action="append", default=[], metavar="NAME", help="save NAME at full rank (repeatable)"
    )
    p.add_argument(
        "-e", "--exclude-regex", action="append", default=[], metavar="RE", help="leave out matching modules"
    )
    p.add_argument(
        "-i", "--include-regex", action="append", default=[], metavar="RE", help="consider only matching modules"
    )
    p.add_argument("--skip-undecomposable", action="store_true", help="leave out modules that cannot be decomposed")
    p.add_argument("--out-dtype", default=None, help="dtype of the adapter tensors (default: the fine-tune's)")
    add_recipe_options(p)
    p.add_argument("-n", "--dry-run", action="store_true", help="say what would be computed, build nothing")
    p.add_argument("-B", "--always-make", action="store_true", help="recompute everything")
    p.add_argument("-j", "--jobs", type=int, default=1, help="modules decomposed in parallel")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--memory-budget", type=parse_size, default=None, help="bytes of tensors in flight")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--quiet", action=argparse.BooleanOptionalAction, default=False, help="no progress bars")
    from mergefile.cli.mergekit_options import add_mergekit_options

    add_mergekit_options(p)  # mergekit-extract-lora takes every merge option too


def lora_target(args: argparse.Namespace, base_dir: Path):
    """The ``lora`` target these arguments describe (an AST node, as a Mergefile would give)."""
    from mergefile.errors import Loc
    from mergefile.syntax.ast import AutoRef, Param, Sym, Target

    ft, base, out = args.finetuned or args.model_opt, args.base or args.base_opt, args.out or args.out_opt
    if not (ft and base and out):
        raise UserError("extract-lora needs FINETUNED BASE OUT (or --model, --base-model, --out-path)")
    loc = Loc("<extract-lora>", 1, 1)

    def ref(text: str) -> AutoRef:
        return AutoRef(text, str(base_dir), loc)

    params = [Param("finetuned", ref(ft), None, loc), Param("base", ref(base), None, loc)]
    options = {
        "rank": args.rank,
        "sv_epsilon": args.sv_epsilon,
        "distribute_scale": args.distribute_scale,
        "embed_lora": args.embed_lora,
        "skip_undecomposable": args.skip_undecomposable or None,
    }
    params += [Param(k, v, None, loc) for k, v in options.items() if v is not None]
    for name, values in (
        ("save_modules", args.save_module),
        ("exclude_regex", args.exclude_regex),
        ("include_regex", args.include_regex),
    ):
        if values:
            params.append(Param(name, tuple(values), None, loc))
    if args.out_dtype:
        params.append(Param("out_dtype", Sym(args.out_dtype, loc), None, loc))
    for spec in args.rank_pattern:
        filt, eq, value = spec.rpartition("=")
        if not eq or not filt or not value.strip().isdigit():
            raise UserError(f"--rank-pattern wants FILTER=RANK, got '{spec}'")
        params.append(Param("rank", int(value), filt, loc))
    return Target(out, "lora", tuple(params), loc=loc, method_loc=loc, origin=_as_text(out, params))


def _as_text(out: str, params) -> str:
    """The target as Mergefile text (the adapter's model card shows it; it depends on options only)."""
    import json

    from mergefile.syntax.ast import AutoRef, Sym

    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, AutoRef):
            return json.dumps(v.text)
        if isinstance(v, Sym):
            return v.name
        return json.dumps(v) if isinstance(v, str) else str(v)

    call = ", ".join(f"{p.name}={value(p.value)}" for p in params if p.filter is None)
    block = "".join(f"\n    {p.name}[{p.filter}] = {value(p.value)}" for p in params if p.filter is not None)
    return f"{out}: lora({call})" + (f" {{{block}\n}}" if block else "")


def _mergekit_settings(args: argparse.Namespace) -> dict:
    """mergekit's merge options as this verb uses them, their notes printed (unless --quiet)."""
    from mergefile.cli import mergekit_options as mk

    values = mk.given(args)
    settings = mk.build_settings(values)
    args.quiet = args.quiet or bool(values.get("quiet"))
    lines = mk.notes(values)
    if "out_shard_size" in values:
        lines.append(f"note: --out-shard-size changes nothing: an adapter is one file ({ADAPTER_FILE})")
    if "random_seed" in values:
        lines.append("note: --random-seed changes nothing: the extraction (an SVD) uses no random numbers")
    if settings.get("hub_cache"):
        mk.set_hub_cache(str(settings["hub_cache"]))
    settings["device"], note = mk.resolve_device(str(settings.get("device", args.device)))
    for line in (*lines, *([note] if note else [])) if not args.quiet else ():
        print(f"mergebuild: {line}", file=sys.stderr)
    return settings


def run(args: argparse.Namespace) -> int:
    from mergefile.cli.progress import make_progress
    from mergefile.cli.render import (
        build_line,
        dry_run_lines,
        explain_lines,
        report_json,
    )
    from mergefile.run.build import BuildOptions, build, default_memory_budget
    from mergefile.syntax.ast import Mergefile

    enter_directory(args)
    target = lora_target(args, Path.cwd())
    mf = Mergefile(str(Path.cwd() / "Mergefile"), (target,))
    settings = _mergekit_settings(args)
    options = BuildOptions(
        jobs=max(1, int(settings.get("jobs", args.jobs))),
        device=str(settings.get("device", args.device)),
        force=args.always_make,
        dry_run=args.dry_run,
        memory_budget=args.memory_budget or default_memory_budget(),
        allow_pickle=args.allow_pickle,
        copy_tokenizer=bool(settings["copy_tokenizer"]),
        write_card=bool(settings["write_card"]),
        allow_crimes=bool(settings.get("allow_crimes", False)),
    )
    quiet = args.quiet or args.json or not sys.stderr.isatty()
    with open_store(args) as store, make_progress(quiet) as progress:
        report = build(mf, [target.name], store, options, progress, ["extract-lora"])
    if args.json:
        print(report_json(report, args.dry_run))
    for r in report.targets if not args.json else ():
        lines = explain_lines(r) + dry_run_lines(r) if args.dry_run else [build_line(r)]
        print("\n".join(lines))
    return 0
