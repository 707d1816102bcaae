"""``stat`` identity of files and folder trees, and of mergebuild's own code.

What up-to-date stamps (``store/stamp.py``) and the build server's fingerprint
(``server/fingerprint.py``) key on. Standard library and xxhash only: the console script's
client imports this before it knows whether anything heavier is needed.
"""

from __future__ import annotations

import json
import os

import xxhash

MAX_ENTRIES = 20_000  # a folder tree bigger than this is not worth stamping
_SKIP_DIRS = {"__pycache__", ".git"}


class TooBig(Exception):
    """A folder tree of more than ``MAX_ENTRIES`` entries."""


def identity(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, st.st_mode]


def walk(root: str, out: dict[str, list[int] | None]) -> None:
    """Identity of ``root`` and, if it is a folder, of everything under it (symlinks followed)."""
    try:
        st = os.stat(root)
    except OSError:
        out[root] = None  # absence is a fact too: the file appearing must invalidate
        return
    out[root] = identity(st)
    if not os.path.isdir(root):
        return
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            out[folder] = None
            continue
        for e in entries:
            if e.name in _SKIP_DIRS:
                continue
            try:
                est = e.stat()
            except OSError:
                out[e.path] = None
                continue
            out[e.path] = identity(est)
            if e.is_dir():
                stack.append(e.path)
        if len(out) > MAX_ENTRIES:
            raise TooBig


def code_fingerprint() -> str:
    """mergebuild's own code: a changed method or planner must not be vouched for by old stamps,
    nor served by a server that imported the old one."""
    import mergefile

    files: dict[str, list[int] | None] = {}
    walk(os.path.dirname(os.path.realpath(mergefile.__file__)), files)
    text = json.dumps([getattr(mergefile, "__version__", ""), sorted(files.items())])
    return xxhash.xxh3_128_hexdigest(text.encode())
