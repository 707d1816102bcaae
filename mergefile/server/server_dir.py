"""Where build servers live: one private folder per user, four files per server.

``$MERGEBUILD_SERVER_DIR``, else ``$XDG_RUNTIME_DIR/mergebuild``, else
``$TMPDIR/mergebuild-UID``. The folder must belong to this user and be closed to everyone else
(mode 0700): a socket in it runs builds as this user. Per server, named by its fingerprint:
``KEY.sock`` (the socket), ``KEY.json`` (pid, start time), ``KEY.lock`` (held while it serves, so
two servers never race for one name) and ``KEY.log`` (its output). Paths are plain strings:
the client imports this, and pathlib alone would cost it more than the rest of its imports.
"""

from __future__ import annotations

import os
import stat

DIR_ENV = "MERGEBUILD_SERVER_DIR"
NAME_CHARS = 16  # of the fingerprint: short enough for a unix socket path (108 bytes)


class UnsafeDirectory(Exception):
    """The server folder is not private to this user (or cannot be made so)."""


def server_dir() -> str:
    if os.environ.get(DIR_ENV):
        return os.environ[DIR_ENV]
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "mergebuild")
    return os.path.join(os.environ.get("TMPDIR") or "/tmp", f"mergebuild-{os.getuid()}")


def private_dir(create: bool) -> str | None:
    """The server folder, checked private; None if it does not exist and ``create`` is false."""
    d = server_dir()
    if create:
        try:
            os.makedirs(d, mode=0o700, exist_ok=True)
        except OSError as e:
            raise UnsafeDirectory(f"cannot create {d}: {e.strerror}") from None
    try:
        st = os.lstat(d)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise UnsafeDirectory(f"{d} must be a folder owned by uid {os.getuid()} with mode 0700")
    return d


def name(fingerprint: str) -> str:
    """A server's file name stem."""
    return fingerprint[:NAME_CHARS]


def paths(directory: str, fingerprint: str) -> dict[str, str]:
    stem = name(fingerprint)
    return {kind: os.path.join(directory, f"{stem}.{kind}") for kind in ("sock", "json", "lock", "log")}


def known_servers(directory: str) -> list[str]:
    """Every server's socket in ``directory`` (any fingerprint)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(os.path.join(directory, n) for n in names if n.endswith(".sock") and not n.startswith("."))
