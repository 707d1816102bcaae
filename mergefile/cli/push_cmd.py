"""``mergebuild push TARGET org/name``: upload a built output folder to the Hugging Face Hub.

Only an up-to-date target goes up: a stale or missing one is refused (build it first), so what
is published is exactly what the recipe says. ``--dry-run`` lists the files and sizes instead.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from mergefile.cli.main import add_recipe_options, enter_directory, load_recipe, open_store
from mergefile.errors import UserError

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="TARGET", help="the output folder to upload (a target of the recipe)")
    p.add_argument("repo_id", metavar="ORG/NAME", help="the Hub repository (created if missing)")
    add_recipe_options(p)
    p.add_argument("-n", "--dry-run", action="store_true", help="list what would be uploaded, upload nothing")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--revision", default=None, help="branch to push to (created if missing; default: main)")
    p.add_argument("-m", "--message", default=None, help="commit message")


def _check_target(args, mf) -> Path:
    """The output folder of an up-to-date target; UserError otherwise."""
    from mergefile.plan.graph import normalize_name
    from mergefile.run.build import BuildOptions, build
    from mergefile.syntax.ast import Target

    name = normalize_name(args.target)
    rule = mf.targets().get(name)
    if rule is not None and not isinstance(rule, Target):
        raise UserError(f"'{name}' is a group, not a target with an output folder; push its targets one by one")
    with open_store(args) as store:
        report = build(mf, [name], store, BuildOptions(dry_run=True, allow_pickle=args.allow_pickle))
    r = next(t for t in report.targets if t.name == name)
    if r.status.manifest is None:
        raise UserError(f"'{name}' has not been built yet", hint=f"build it first: mergebuild {name}")
    if not r.status.up_to_date:
        raise UserError(
            f"'{name}' is stale ({len(r.status.stale)} tensors out of date); refusing to push an output that does not match the recipe",
            hint=f"build it first: mergebuild {name}; `mergebuild --explain {name}` says why",
        )
    return r.status.kp.plan.out_dir


def _files(folder: Path) -> list[tuple[str, int]]:
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*") if p.is_file())


def run(args: argparse.Namespace) -> int:
    from mergefile.cli.render import human_bytes

    if not _REPO_ID.match(args.repo_id):
        raise UserError(f"'{args.repo_id}' is not a Hub repository id", hint="use ORG/NAME, e.g. my-user/my-merge")
    enter_directory(args)
    args.targets = [args.target]  # what load_recipe names a --config target
    mf = load_recipe(args)
    folder = _check_target(args, mf)
    files = _files(folder)
    where = f"{args.repo_id}" + (f"@{args.revision}" if args.revision else "")
    if args.dry_run:
        for name, size in files:
            print(f"{size:>14,}  {name}")
        total = sum(s for _, s in files)
        print(
            f"would upload {len(files)} files ({human_bytes(total)}) from {folder} to {where}"
            + (" (private)" if args.private else "")
        )
        return 0
    from mergefile.io.hub import upload_folder

    message = args.message or f"mergebuild: {args.target}"
    try:
        url = upload_folder(str(folder), args.repo_id, private=args.private, revision=args.revision, message=message)
    except Exception as e:  # the hub library raises many types; all mean "could not upload"
        first = str(e).splitlines()[0] if str(e) else ""
        raise UserError(
            f"upload to {where} failed: {type(e).__name__}: {first}",
            hint="logged in? (`hf auth login` or HF_TOKEN); offline? (HF_HUB_OFFLINE)",
        ) from None
    print(f"pushed {len(files)} files to {where}: {url}")
    return 0
