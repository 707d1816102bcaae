"""Answering a repeated, up-to-date command cheaply: from its stamp, and before parsing at all.

The up-to-date proof is ``store/stamp.py``'s alone (what it depends on: ``mergefile/depends.py``);
this module only prints and logs its answer, at two levels:

* the CLI parses the command line, builds the stamp request and asks the stamp
  (``main.stamped_noop`` -> :func:`answer_stamped`): no planner, no torch;
* the console script, before it imports the CLI or contacts a build server, asks the stamp by
  the command's **alias** (:func:`answer_alias`: the exact command -> the stamp it meant last
  time, ``stamp.check_alias``). Users and CI scripts repeat the same command byte for byte;
  argparse gives an identical command the same meaning, and everything else is checked again.
  Any doubt is a miss and the command runs as usual.

The console script imports this module first, so it keeps to the standard library and xxhash.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from mergefile.store import stamp


def up_to_date_line(name: str) -> str:
    return f"{name} is up to date"


def answer_stamped(request: dict, argv: Sequence[str], question: bool) -> int | None:
    """Exit status 0 and the usual lines if the stamp vouches for ``request``; None otherwise."""
    found = stamp.check(request["cache"], request)
    if found is None:
        return None
    return _answer(request, *found, argv, question, alias=False)


def answer_alias(argv: Sequence[str]) -> int | None:
    """The exit status of a repeated command its alias and stamp vouch for; None: run it."""
    try:
        cwd = os.getcwd()
    except OSError:
        return None
    found = stamp.check_alias(cwd, argv)
    if found is None:
        return None
    request, question, targets, messages = found
    return _answer(request, targets, messages, argv, question, alias=True)


def _answer(
    request: dict, targets: list[str], messages: list[str], argv: Sequence[str], question: bool, alias: bool
) -> int:
    from mergefile.store.log import BuildLog

    for m in messages:
        print(m, file=sys.stderr)
    run = BuildLog(os.path.join(request["cache"], "logs")).start_run(list(argv))
    for name in targets:
        run.record(target=name, status="up-to-date", stamp=True)
    run.close(
        targets=targets,
        computed=0,
        hits=0,
        stage_hits=0,
        stage_misses=0,
        bytes_read=0,
        bytes_written=0,
        stamp=True,
        **({"alias": True} if alias else {}),
    )
    if not question:
        for name in targets:
            print(up_to_date_line(name))
    return 0
