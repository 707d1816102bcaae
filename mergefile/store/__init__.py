"""Content keys, the input stat-cache, the tensor blob store, output locks and build logs.

Names are imported on first use (PEP 562) so that planning, key computation and locking never
pay for importing torch: a no-op rebuild must finish in about a second.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing's own import costs the console script's client 5 ms

_EXPORTS = {
    "BlobStore": "blobs",
    "BuildLog": "log",
    "DEFAULT_SIZE_LIMIT": "store",
    "HASH_VERSION": "keys",
    "RunLog": "log",
    "StatCache": "statcache",
    "Store": "store",
    "canonical_json": "keys",
    "default_cache_dir": "store",
    "input_key": "keys",
    "key_of": "keys",
    "lock_path": "lock",
    "output_lock": "lock",
    "seed_from_key": "keys",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover  (for type checkers: __getattr__ loads these on first use)
    from mergefile.store.blobs import BlobStore  # noqa: F401
    from mergefile.store.keys import HASH_VERSION, canonical_json, input_key, key_of, seed_from_key  # noqa: F401
    from mergefile.store.lock import lock_path, output_lock  # noqa: F401
    from mergefile.store.log import BuildLog, RunLog  # noqa: F401
    from mergefile.store.statcache import StatCache  # noqa: F401
    from mergefile.store.store import DEFAULT_SIZE_LIMIT, Store, default_cache_dir  # noqa: F401


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
