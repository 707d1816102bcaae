"""One mergebuild per output folder.

``flock`` on a sibling file ``<parent>/.<name>.mergebuild.lock``: the kernel drops it when the
holder exits or crashes, so there are no stale locks to clean up by hand (the pain behind
``snakemake --unlock``). The sibling keeps two builds of one folder apart whichever cache
each uses, and on any machine that shares the folder's filesystem.

No litter: the holder deletes the file before it lets go. Unlinking a flock'd file would let a
waiter lock the old inode while a newcomer locks a new one, so a lock only counts once the
path still names the inode that was locked (``_same_file``); a waiter that won a deleted inode
opens the path again. A file left by a killed build is reused, then removed, by the next one.
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


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (the holder may have deleted it)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_ino, st.st_dev) == (mine.st_ino, mine.st_dev)


def _locked(out_dir: str | Path, pid: int | None) -> LockedError:
    who = f"pid {pid}" if pid is not None else "pid unknown"
    return LockedError(
        f"{out_dir} is being built by another mergebuild ({who})", hint="wait for it to finish, or build another target"
    )


@contextmanager
def output_lock(
    out_dir: str | Path,
    *,
    wait: bool = True,
    on_wait: Callable[[int | None], None] | None = None,
    timeout: float | None = None,
) -> Iterator[Path]:
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
    deadline = None if timeout is None else time.monotonic() + timeout
    told = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _try_lock(fd):
                pid = _holder_pid(fd)
                if on_wait is not None and not told:
                    on_wait(pid)
                    told = True
                if not wait:
                    raise _locked(out_dir, pid)
                _wait_lock(fd, deadline, out_dir)
            if not _same_file(fd, path):  # the holder deleted it as it finished: lock the new one
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            try:
                yield path
            finally:
                path.unlink(missing_ok=True)  # while still held: no one can be waiting on a newer file
                os.ftruncate(fd, 0)  # no stale pid for a waiter on this inode to report
                fcntl.flock(fd, fcntl.LOCK_UN)
            return
        finally:
            os.close(fd)


def _wait_lock(fd: int, deadline: float | None, out_dir: str | Path) -> None:
    """Block until ``fd`` is locked, or raise LockedError at ``deadline``."""
    if deadline is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    while not _try_lock(fd):
        if time.monotonic() >= deadline:
            raise _locked(out_dir, _holder_pid(fd))
        time.sleep(_POLL_S)
