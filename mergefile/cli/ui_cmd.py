"""``mergebuild ui [-f Mergefile | --config YAML] [--port N] [--no-browser] [--evolve DIR]``: a local page.

Serves the recipe's graph, edit-and-see, builds and cache history on 127.0.0.1 with a random
token in the URL (docs/ui.md). Needs the ``ui`` extra (starlette, uvicorn).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mergefile.cli.main import add_recipe_options, enter_directory
from mergefile.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "target",
        nargs="?",
        default=None,
        metavar="TARGET",
        help="with --config: the output folder the YAML builds (default: out/<config name>)",
    )
    add_recipe_options(p)
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--no-browser", action="store_true", help="only print the URL; do not open a browser")
    p.add_argument(
        "--evolve",
        action="append",
        default=[],
        metavar="DIR",
        help="also show this evolve search's storage path (mergebuild evolve --storage-path); repeatable",
    )
    p.add_argument("-j", "--jobs", type=int, default=1, help="tensors computed in parallel by page builds")


def make_session(args: argparse.Namespace):
    """The recipe session the flags name (paths made absolute: the server outlives the cwd)."""
    from mergefile.store.location import resolve_cache_dir
    from mergefile.ui.session import RecipeSession

    if args.config:
        path = Path(args.config)
        target = args.target or f"out/{path.stem}"
    else:
        if args.target:
            raise UserError("a TARGET is only given with --config (a Mergefile names its own targets)")
        path, target = Path(args.file or "Mergefile"), None
    if not path.is_file():
        what = (
            f"config file '{path}'" if args.config else (f"'{path}'" if args.file else f"no Mergefile in {Path.cwd()}")
        )
        raise UserError(
            f"{what} not found" if args.config or args.file else what,
            hint=None if args.config else "use -f FILE, -C DIR or --config YAML",
        )
    for folder in args.evolve:
        if not (Path(folder) / "history.jsonl").is_file():
            raise UserError(
                f"--evolve {folder}: no evolve search there (no history.jsonl)",
                hint="give the --storage-path of a mergebuild evolve run",
            )
    cache = resolve_cache_dir(args.cache_dir, Path.cwd()).absolute()
    return RecipeSession(
        path.absolute(),
        cache,
        target,
        args.cache_size,
        args.allow_pickle,
        args.lenient,
        [Path(f).absolute() for f in args.evolve],
        Path.cwd() if args.config else None,
    )


def run(args: argparse.Namespace) -> int:
    enter_directory(args)
    session = make_session(args)
    try:
        from mergefile.ui.server import UiServer
    except ImportError as e:
        raise UserError(
            f"mergebuild ui needs the ui extra ({e.name} is not installed)", hint="pip install 'mergebuild[ui]'"
        ) from None
    server = UiServer(  # a recipe that does not parse still opens: the page shows the error
        session, port=args.port, jobs=args.jobs
    )
    print(f"mergebuild ui: {session.path}\n  {server.url}\n(Ctrl-C stops it)", flush=True)
    if not args.no_browser:
        import webbrowser

        webbrowser.open(server.url)
    try:
        server.serve()
    except KeyboardInterrupt:
        pass
    print("mergebuild ui: stopped", file=sys.stderr)
    return 0
