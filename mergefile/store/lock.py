"""One mergebuild per output folder.

``flock`` on a sibling file ``<parent>/.<name>.mergebuild.lock``: the kernel drops it when the
holder exits or crashes, so there are no stale locks to clean up by hand (the pain behind
``snakemake --unlock``). The lock file is never deleted: unlinking a flock'd file lets a
waiter lock the old inode while a newcomer locks a new one, and both would "hold" it.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mergefile.errors import LockedError

_POLL_S = 0.05


def lock_path(out_dir: str | Path) -> Path:
    """The lock file guarding out_dir (symlinks resolved, so two spellings share one lock)."""
    out = Path(out_dir).resolve()
    return out.parent / f".{out.name}.mergebuild.lock"


def _holder_pid(fd: int) -> int | None:
    # The holder writes its pid right after locking; give it a moment if we read too early.
    for _ in range(5):
        try:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            if text:
                return int(text)
        except (OSError, ValueError):
            return None
        time.sleep(0.02)
    return None


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _locked(out_dir: str | Path, pid: int | None) -> LockedError:
    who = f"pid {pid}" if pid is not None else "pid unknown"
    return LockedError(f"{out_dir} is being built by another mergebuild ({who})",
                       hint="wait for it to finish, or build another target")


@contextmanager
def output_lock(out_dir: str | Path, *, wait: bool = True,
                on_wait: Callable[[int | None], None] | None = None,
                timeout: float | None = None) -> Iterator[Path]:
    """Hold the exclusive build lock of out_dir for the duration of the block.

    Args:
        out_dir: the output folder (need not exist; its parent is created).
        wait: block until the lock is free; False raises at once.
        on_wait: called once with the holder's pid (None if unknown) before waiting.
        timeout: seconds to wait at most (None: forever).

    Yields:
        The lock file's path.

    Raises:
        LockedError: another process (or another holder in this one) has the lock and
            ``wait`` is False or ``timeout`` ran out.

    Example:
        >>> with output_lock("out/math-code", on_wait=lambda pid: print("waiting for", pid)):
        ...     build()
    """
    path = lock_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd):
            pid = _holder_pid(fd)
            if on_wait is not None:
                on_wait(pid)
            if not wait:
                raise _locked(out_dir, pid)
            if timeout is None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                deadline = time.monotonic() + timeout
                while not _try_lock(fd):
                    if time.monotonic() >= deadline:
                        raise _locked(out_dir, _holder_pid(fd))
                    time.sleep(_POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # no stale pid for the next waiter to report
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
