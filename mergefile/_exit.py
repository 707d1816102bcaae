"""End a process the way interpreter shutdown would, minus its teardown of every module.

With torch and numba loaded, Python's finalization (clearing each module, collecting the cycles
between their objects) takes 0.4-0.9 s on a 2-core machine: a tenth of an incremental build,
for nothing, since the process is about to go. Everything that must outlive a build is already
on disk when it ends (outputs and blobs by atomic rename, the cache's sqlite commits, the run
log's unbuffered appends). What shutdown does that does matter is done here: non-daemon threads
are joined, ``atexit`` handlers run (Ray's shutdown, temporary folders, logging), the standard
streams are flushed; then ``os._exit``. A served build's fork ends the same way
(``server/child.py``).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn


def finish_process() -> None:
    """Join threads, run ``atexit`` handlers and flush stdout/stderr; never raises."""
    try:
        threading._shutdown()  # type: ignore[attr-defined] - joins non-daemon threads, as exit does
    except BaseException:  # noqa: BLE001
        pass
    try:
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - a closed pipe: nothing more can be said anyway
            pass


def exit_now(code: int) -> NoReturn:
    """``sys.exit(code)`` without the module teardown (see the module docstring)."""
    finish_process()
    os._exit(code & 0xFF)
