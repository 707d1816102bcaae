"""``mergebuild``: make for model merges. Thin: parse flags, call the library, render.

Exit status follows make: 0 done/up to date, 1 stale under ``-q``, 2 user error.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mergefile.errors import TensorFailed, UserError


def parse_size(text: str) -> int:
    """``4G``, ``512M``, ``1.5GiB``, ``1000000`` -> bytes."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    try:
        if t and t[-1] in mult:
            return int(float(t[:-1]) * mult[t[-1]])
        return int(float(t))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512M, 4G)") from None


# Verbs: `mergebuild VERB ...`; each module has add_arguments(parser) and run(args) -> int.
# A target named like a verb is built with `mergebuild ./graph`.
VERBS: dict[str, tuple[str, str]] = {
    "status": ("mergefile.cli.status_cmd", "exit 0 if up to date, 1 if stale (like -q), with a summary"),
    "cache": ("mergefile.cli.cache_cmd", "cache stats|ls|gc|verify|clear: what the tensor cache holds"),
    "log": ("mergefile.cli.log_cmd", "past builds, or one build's per-tensor records (like .ninja_log)"),
    "graph": ("mergefile.cli.graph_cmd", "the target graph as DOT (or SVG/PNG with graphviz), stale targets marked"),
    "lock": ("mergefile.cli.lock_cmd", "pin hub models to commits and input files to digests in Mergefile.lock"),
    "push": ("mergefile.cli.push_cmd", "upload a built target to the Hugging Face Hub"),
    "import": ("mergefile.cli.import_cmd", "print a mergekit YAML config as an equivalent Mergefile"),
    "export": ("mergefile.cli.export_cmd", "print a target as an equivalent mergekit YAML config"),
    "fmt": ("mergefile.cli.fmt_cmd", "rewrite a Mergefile canonically, comments kept (--check for CI)"),
    "evolve": (
        "mergefile.cli.evolve_cmd",
        "evolutionary merge search (CMA-ES, lm-eval, Ray) from a mergekit-evolve YAML",
    ),
    "yaml": (
        "mergefile.cli.yaml_cmd",
        "mergekit-yaml CONFIG OUT [options], built through the cache (docs/mergekit.md)",
    ),
    "multi": ("mergefile.cli.multi_cmd", "mergekit-multi CONFIG -I DIR --out-path OUT [options]"),
    "moe": ("mergefile.cli.moe_cmd", "mergekit-moe CONFIG OUT [options]"),
    "extract-lora": (
        "mergefile.cli.extract_lora_cmd",
        "extract a PEFT LoRA adapter from a fine-tune (like mergekit-extract-lora)",
    ),
    "server": ("mergefile.cli.server_cmd", "start|stop|status: a resident build server that keeps torch imported"),
    "ui": ("mergefile.cli.ui_cmd", "a local web page to see, edit and build the recipe (needs the ui extra)"),
}


def add_recipe_options(p: argparse.ArgumentParser) -> None:
    """Where the recipe and the cache are: shared by the build and every verb."""
    p.add_argument("-f", "--file", default=None, help="the Mergefile (default: ./Mergefile)")
    p.add_argument("-C", "--directory", default=None, help="change to DIR first")
    p.add_argument("--config", default=None, metavar="YAML", help="use a mergekit YAML config as TARGET")
    p.add_argument("--cache-dir", default=None, help="cache folder (default: $MERGEBUILD_CACHE_DIR or ./cache)")
    p.add_argument("--cache-size", type=parse_size, default=None, help="cache size limit (e.g. 100G)")
    p.add_argument("--allow-pickle", action="store_true", help="read pickled .bin weights (weights-only loading)")
    p.add_argument("--lenient", action="store_true", help="unknown keys in mergekit YAML warn instead of failing")
    p.add_argument(
        "--target-prefix",
        default=None,
        metavar="P",
        help="with --config: stages of a multi-document YAML are targets P+name (default: TARGET's folder)",
    )


def enter_directory(args) -> None:
    if args.directory:
        try:
            os.chdir(args.directory)
        except OSError as e:
            raise UserError(f"cannot change to directory '{args.directory}': {e.strerror}") from None


def open_store(args, read_only: bool = False):
    """The cache named by --cache-dir / $MERGEBUILD_CACHE_DIR / ./cache (a context manager).

    ``read_only``: the command computes and writes no tensor (``graph``, ``status``, ``-n``,
    ``-q``, ``log``): when the cache does not exist it gets a scratch store that leaves nothing
    behind, instead of creating ``./cache``.
    """
    from mergefile.store.location import resolve_cache_dir
    from mergefile.store.store import DEFAULT_SIZE_LIMIT, Store

    root = resolve_cache_dir(args.cache_dir, Path.cwd())
    size = args.cache_size or DEFAULT_SIZE_LIMIT
    if read_only and not Path(root).exists():
        return Store.scratch(size)
    return Store(root, size)


def requested_targets(args, mf) -> list[str]:
    return [mf.statements[-1].name] if args.config else list(args.targets)  # the final YAML document


@functools.lru_cache(maxsize=1)
def make_parser() -> argparse.ArgumentParser:
    """The build command's parser (built once: parsing does not change it; the build server
    builds it before forking)."""
    verbs = "\n".join(f"  {name:<14}{help}" for name, (_, help) in VERBS.items())
    p = argparse.ArgumentParser(
        prog="mergebuild",
        description="Build merged models from a Mergefile, recomputing only what changed.",
        epilog=f"other commands (mergebuild COMMAND --help):\n{verbs}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("targets", nargs="*", metavar="TARGET", help="targets to build (default: the first in the file)")
    add_recipe_options(p)
    p.add_argument("-n", "--dry-run", action="store_true", help="say what would be recomputed, build nothing")
    p.add_argument(
        "-B", "--always-make", action="store_true", help="rebuild everything (ignore outputs and cache hits)"
    )
    p.add_argument("-j", "--jobs", type=int, default=1, help="tensors (and independent targets) computed in parallel")
    p.add_argument("-q", "--question", action="store_true", help="exit 1 if anything is stale, 0 if up to date")
    p.add_argument("--explain", action="store_true", help="say why each stale target/tensor is stale")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--read-to-device", action="store_true", help="read inputs straight to --device and cast them there")
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="where tensors are computed (default: local threads)",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="with --executor ray: join this Ray cluster (default: start a local Ray)",
    )
    p.add_argument("--memory-budget", type=parse_size, default=None, help="bytes of tensors in flight (default: RAM/4)")
    p.add_argument("--no-wait", action="store_true", help="fail instead of waiting when an output is being built")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--allow-crimes", action="store_true", help="merge models of different architectures (refused by default)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="list every tensor in explanations")
    p.add_argument(
        "--out-shard-size",
        type=shard_size,
        default=None,
        metavar="SIZE",
        help="pack whole layers into shards of at most SIZE (5B = 5e9 bytes; default: one shard per layer)",
    )
    return p


def shard_size(text: str) -> int:
    """``--out-shard-size`` as mergekit reads it (decimal: 1B = 10**9 bytes)."""
    from mergefile.io.shards import parse_shard_size

    try:
        return parse_shard_size(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a shard size: {text!r} (e.g. 5B, 500M)") from None


def load_recipe(args) -> object:
    from mergefile.syntax import load_yaml_targets, parse_mergefile
    from mergefile.syntax.ast import Mergefile

    if args.config:
        if len(args.targets) != 1:
            raise UserError(
                "--config needs exactly one TARGET: the output folder to build, e.g. mergebuild --config merge.yml out/model"
            )
        path = Path(args.config)
        if not path.is_file():
            raise UserError(f"config file '{args.config}' not found")
        lenient = getattr(args, "lenient", False)
        from mergefile.targets.moe_yaml import moe_yaml_to_target  # a mergekit-moe config (it has experts:)

        moe = moe_yaml_to_target(path, args.targets[0])
        targets = (
            (moe,)
            if moe
            else load_yaml_targets(path, args.targets[0], prefix=getattr(args, "target_prefix", None), lenient=lenient)
        )
        return Mergefile(str(Path.cwd() / "Mergefile"), with_settings(targets, getattr(args, "target_settings", None)))
    path = Path(args.file or "Mergefile")
    if not path.is_file():
        where = f"'{path}'" if args.file else f"in {Path.cwd()}"
        raise UserError(f"no Mergefile found {where} (use -f FILE, -C DIR or --config YAML)")
    return parse_mergefile(path, lenient=getattr(args, "lenient", False))


def with_settings(targets: tuple, settings: dict | None) -> tuple:
    """Every target as if its config said ``settings`` (mergekit's ``--random-seed N`` is
    ``seed: N``): each replaces the target's own."""
    if not settings:
        return tuple(targets)
    from dataclasses import replace

    from mergefile.syntax.ast import Param

    return tuple(
        replace(
            t,
            params=(
                *(p for p in t.params if p.name not in settings),
                *(Param(k, v, None, t.loc) for k, v in settings.items()),
            ),
        )
        for t in targets
    )


def run_verb(
    name: str,
    argv: list[str],
    given: dict[str, tuple[str, object]] | None = None,
    command_line: list[str] | None = None,
) -> int:
    """Run verb ``name``; ``given``: global options written before it (dest -> (flag, value));
    ``command_line``: the whole command, which a verb may alias (cli/noop.py)."""
    import importlib

    module_name, help = VERBS[name]
    module = importlib.import_module(module_name)
    p = argparse.ArgumentParser(prog=f"mergebuild {name}", description=help)
    module.add_arguments(p)
    if given:
        _apply_global_options(p, name, given)
    args = p.parse_args(argv)
    args.command_line = command_line
    return module.run(args)


def _leading_options(argv: list[str]) -> int:
    """How many tokens at the front of ``argv`` are build options (with their values)."""
    takes_value = {s: a.nargs != 0 for a in make_parser()._actions for s in a.option_strings}
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        flag = argv[i].split("=", 1)[0]
        if flag not in takes_value:
            break
        i += 2 if takes_value[flag] and "=" not in argv[i] else 1
    return i


def split_global_options(argv: list[str]) -> tuple[str, list[str], dict[str, tuple[str, object]]] | None:
    """``mergebuild -f F -C D VERB ...`` as git reads it: (verb, its arguments, the options
    before it as dest -> (flag, value)); None when no verb follows the leading options."""
    n = _leading_options(argv)
    if n == 0 or n >= len(argv) or argv[n] not in VERBS:
        return None
    parser = make_parser()
    given = vars(parser.parse_args(argv[:n]))
    defaults = vars(parser.parse_args([]))
    flags = {a.dest: a.option_strings[-1] for a in parser._actions if a.option_strings}
    return argv[n], argv[n + 1 :], {k: (flags[k], v) for k, v in given.items() if v != defaults[k]}


def _apply_global_options(p: argparse.ArgumentParser, verb: str, given: dict[str, tuple[str, object]]) -> None:
    """Options before a verb become its defaults (the verb's own flags still win); ``-C`` is
    honoured by every verb, ``--quiet`` is dropped where a verb has no progress to hide."""
    parsers = [p] + [sp for a in p._actions if isinstance(a, argparse._SubParsersAction) for sp in a.choices.values()]
    dests = {a.dest for q in parsers for a in q._actions}
    for dest, (flag, value) in given.items():
        if dest in dests:
            for q in parsers:
                q.set_defaults(**{dest: value})
        elif dest == "directory":
            enter_directory(argparse.Namespace(directory=value))
        elif dest != "quiet":
            raise UserError(
                f"option '{flag}' does not apply to 'mergebuild {verb}'; see mergebuild {verb} --help for its options"
            )


def run(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in VERBS:
        return run_verb(argv[0], argv[1:], command_line=argv)
    verb = split_global_options(argv)
    if verb is not None:
        return run_verb(*verb, command_line=argv)
    args = make_parser().parse_args(argv)
    try:
        args.start_cwd = os.getcwd()  # for the command's alias (store/stamp.py)
    except OSError:
        args.start_cwd = None
    enter_directory(args)
    started_ns = time.time_ns()  # before anything is read: a stamp vouches for nothing changed since
    request = stamp_request(args)
    if stampable_command(args):
        done = stamped_noop(args, request, argv)
        if done is not None:
            return done
    mf = load_recipe(args)
    return build_command(args, mf, argv, request, started_ns)


def stampable_command(args) -> bool:
    """Whether an up-to-date stamp may answer this command (not a dry run, explanation,
    JSON report or forced rebuild)."""
    return not (args.dry_run or args.explain or args.json or args.always_make)


def stamp_request(args) -> dict:
    """What identifies a build request for its up-to-date stamp (flags that change the answer)."""
    from mergefile.store.location import resolve_cache_dir

    return {
        "cwd": os.getcwd(),
        "recipe": os.path.realpath(args.config or args.file or "Mergefile"),
        "config": bool(args.config),
        "targets": list(args.targets),
        "target_prefix": args.target_prefix,
        "lenient": args.lenient,
        "allow_pickle": args.allow_pickle,
        "allow_crimes": args.allow_crimes,
        "cache": os.path.realpath(resolve_cache_dir(args.cache_dir, Path.cwd())),
        **output_settings(args),
    }


def output_settings(args) -> dict:
    """Flags that change what an output holds (its shards, small files, random numbers)."""
    return {
        "out_shard_size": args.out_shard_size,
        "copy_tokenizer": getattr(args, "copy_tokenizer", True),
        "write_card": getattr(args, "write_card", True),
        "settings": getattr(args, "target_settings", None),
    }


def stamped_noop(args, request: dict, argv: Sequence[str]) -> int | None:
    """A no-op answered from the stamp of the last up-to-date run (``store/stamp.py``): no
    parsing, planning or tensor library. None: the stamp cannot vouch, do the full check."""
    from mergefile.cli.noop import answer_stamped

    done = answer_stamped(request, argv, args.question)
    if done is not None:
        remember_command(args, request, argv)
    return done


def remember_command(args, request: dict, argv: Sequence[str]) -> None:
    """Alias this exact command to ``request``'s stamp, so repeating it is answered before
    parsing (``store/stamp.py``)."""
    from mergefile.store.location import resolve_cache_dir
    from mergefile.store.stamp import record_alias

    if getattr(args, "start_cwd", None) is None or not stampable_command(args):
        return
    here = request["cwd"]
    resolve = [
        (os.path.join(args.start_cwd, args.directory or "."), here),
        (os.path.join(here, args.config or args.file or "Mergefile"), request["recipe"]),
        (os.path.join(here, str(resolve_cache_dir(args.cache_dir, Path(here)))), request["cache"]),
    ]
    record_alias(args.start_cwd, argv, request, resolve, args.question)


def record_stamp(
    args, mf, request: dict, report, dry: bool, argv: Sequence[str] = (), started_ns: int | None = None
) -> None:
    """After a run that leaves everything up to date, vouch for it (see ``stamped_noop``)."""
    if not report.watched.stampable or (dry and not report.up_to_date):
        return
    from mergefile.store import stamp

    recipe = [os.path.realpath(args.config)] if args.config else list(mf.files or (mf.path,))
    if stamp.record(
        request["cache"],
        request,
        [r.name for r in report.targets],
        recipe + report.watched.paths,
        report.watched.messages,
        read_since_ns=started_ns,
        written=report.watched.outputs,
    ):
        remember_command(args, request, argv)


def build_command(args, mf, argv: Sequence[str], request: dict | None = None, started_ns: int | None = None) -> int:
    from mergefile.cli.progress import make_progress
    from mergefile.cli.render import build_line, dry_run_lines, explain_lines, report_json
    from mergefile.run.build import BuildOptions, build, default_memory_budget

    dry = args.dry_run or args.question or args.explain
    options = BuildOptions(
        jobs=max(1, args.jobs),
        device=args.device,
        force=args.always_make,
        dry_run=dry,
        memory_budget=args.memory_budget or default_memory_budget(),
        allow_pickle=args.allow_pickle,
        allow_crimes=args.allow_crimes,
        wait_for_lock=not args.no_wait,
        executor=args.executor,
        read_to_device=args.read_to_device,
        out_shard_size=args.out_shard_size,
        copy_tokenizer=getattr(args, "copy_tokenizer", True),
        write_card=getattr(args, "write_card", True),
    )
    quiet = args.quiet or args.question or args.json or not sys.stderr.isatty()
    with open_store(args, read_only=dry) as store, make_progress(quiet) as progress, contextlib.ExitStack() as stack:

        def ray_executor():  # Ray starts (or is joined) only when something must be computed
            from mergefile.run.build import make_executor
            from mergefile.run.ray_executor import ray_session

            stack.enter_context(ray_session(args.ray_address, num_cpus=options.jobs))
            return make_executor(options)

        executor = ray_executor if args.executor == "ray" else None
        report = build(mf, requested_targets(args, mf), store, options, progress, argv, executor)
    if request is not None:
        record_stamp(args, mf, request, report, dry, argv, started_ns)
    if args.json:
        print(report_json(report, dry))
    elif args.question:
        if args.explain:
            for r in report.targets:
                print("\n".join(explain_lines(r, args.verbose)))
    elif dry:
        for r in report.targets:
            print("\n".join(explain_lines(r, args.verbose) + dry_run_lines(r)))
    else:
        for r in report.targets:
            print(build_line(r))
    if args.question:
        return 0 if report.up_to_date else 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: user errors become one paragraph and exit code 2."""
    from mergefile.server.environment import set_environment_defaults

    set_environment_defaults()  # before anything imports torch (huge pages, server/environment.py)
    try:
        code = run(argv)
    except UserError as e:
        print(f"mergebuild: error: {e.render()}", file=sys.stderr)
        code = e.exit_code
    except TensorFailed as e:
        if os.environ.get("MERGEBUILD_DEBUG"):
            import traceback

            traceback.print_exception(e.cause)
        print(f"mergebuild: error: {e}", file=sys.stderr)
        code = e.exit_code
    except KeyboardInterrupt:
        print("mergebuild: interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    except OSError as e:  # the machine, not the recipe (a full disk, a failing read): exit 1
        where = f": {e.filename}" if e.filename else ""
        print(
            f"mergebuild: error: {e.strerror or e}{where} (nothing half-written was kept; "
            "rerun to resume from the cache)",
            file=sys.stderr,
        )
        code = 1
    if argv is None:  # the console: exit without tearing down torch's modules (mergefile/_exit.py)
        from mergefile._exit import exit_now

        exit_now(code)
    return code


if __name__ == "__main__":
    main()
