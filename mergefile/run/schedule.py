"""Parallel targets: start each target once the targets it depends on are published.

Each running target has a thread of its own (planning its work, feeding the shared executor,
then publishing); the tensor work of all of them shares the executor's ``jobs`` slots and its one
memory budget, so running targets side by side never adds memory. Publishing stays per target.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait


class Cancelled(Exception):
    """A target stopped early because another one failed."""


def run_targets(
    names: Sequence[str],
    deps: Mapping[str, set[str]],
    build_one: Callable[[str, threading.Event], None],
    parallel: int = 1,
) -> None:
    """Run ``build_one(name, stop)`` for every name, prerequisites first, ``parallel`` at a time.

    Args:
        names: targets in a valid build order (prerequisites before dependents).
        deps: for each name, the names among ``names`` that must finish first.
        build_one: builds one target; should return soon (raising :class:`Cancelled`) once
            ``stop`` is set.
        parallel: targets in progress at once; 1 builds them one by one, in order.

    Raises:
        The first error of any target (after the others in progress have stopped); targets that
        depend on a failed one never start.
    """
    stop = threading.Event()
    if parallel <= 1 or len(names) <= 1:
        for name in names:
            build_one(name, stop)
        return
    done: set[str] = set()
    waiting = list(names)
    running: dict[Future, str] = {}
    error: BaseException | None = None
    with ThreadPoolExecutor(parallel, thread_name_prefix="mergebuild-target") as pool:
        try:
            while waiting or running:
                if error is None:
                    for name in [n for n in waiting if deps.get(n, set()) <= done]:
                        if len(running) >= parallel:
                            break
                        waiting.remove(name)
                        running[pool.submit(build_one, name, stop)] = name
                if not running:
                    break  # what is left waits for a target that failed
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    name = running.pop(fut)
                    exc = fut.exception()
                    if exc is None:
                        done.add(name)
                    elif error is None or isinstance(error, Cancelled):
                        error = exc
                        stop.set()
        except BaseException:  # Ctrl-C while waiting: let the running targets stop
            stop.set()
            raise
    if error is not None:
        raise error
