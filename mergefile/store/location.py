"""Where the cache lives: a module of its own so the no-op fast path can find it cheaply."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_DIR_ENV = "MERGEBUILD_CACHE_DIR"


def default_cache_dir(start: str | Path = ".") -> Path:
    """``$MERGEBUILD_CACHE_DIR`` if set, else ``<start>/cache``."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path(start) / "cache"


def resolve_cache_dir(cache_dir: str | None, start: Path) -> Path:
    """``--cache-dir`` if given, else the default for ``start``."""
    return Path(cache_dir) if cache_dir else default_cache_dir(start)
