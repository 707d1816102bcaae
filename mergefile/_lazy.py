"""Import heavy libraries on first use.

Planning a build — the whole of a no-op rebuild — needs no tensor library, and importing torch
costs seconds. Modules on that path bind ``torch`` to this proxy; the first attribute access
(``torch.float32``, ``torch.Tensor``) imports the real module, and later accesses are a dict
lookup away. Annotations stay plain (``from __future__ import annotations`` keeps them lazy).
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from types import ModuleType
from typing import Any

# PyTorch's CPU allocator asks for transparent huge pages on large blocks when this is set. A
# merge makes a fresh float32 copy of every input tensor; with 4 KiB pages each copy is faulted
# in page by page: a cold build of 4 x 3.1 GB bf16 models took 5.6 M page faults and 32 s of
# kernel time, with 2 MiB pages 0.5 M faults and 18 s (7 s less wall time on the bench VM).
# Read once, when torch first allocates, so it is set here, before any import of torch by
# mergebuild; a value the user set wins, and kernels with THP off ignore it.
ENVIRONMENT_DEFAULTS = {"THP_MEM_ALLOC_ENABLE": "1"}


def set_environment_defaults(environ=os.environ) -> None:
    """Apply ``ENVIRONMENT_DEFAULTS`` where the user set nothing (also in a build forked by the
    build server, whose environment is replaced by its client's)."""
    for name, value in ENVIRONMENT_DEFAULTS.items():
        environ.setdefault(name, value)


set_environment_defaults()


class LazyModule:
    """A stand-in for a module that is imported when an attribute is first read."""

    __slots__ = ("_lazy_name", "_lazy_module")  # names no real module attribute shadows

    def __init__(self, name: str):
        object.__setattr__(self, "_lazy_name", name)
        object.__setattr__(self, "_lazy_module", None)

    def _lazy_load(self) -> ModuleType:
        module = self._lazy_module
        if module is None:
            module = importlib.import_module(self._lazy_name)
            object.__setattr__(self, "_lazy_module", module)
        return module

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._lazy_load(), attr)

    def __repr__(self) -> str:
        state = "loaded" if self._lazy_module is not None else "not loaded"
        return f"<lazy module {self._lazy_name!r} ({state})>"


_preloading: dict[str, threading.Thread] = {}


def preload(name: str) -> None:
    """Start importing ``name`` in a background thread, once.

    A cold build hashes gigabytes of inputs first; xxh3 and the page faults behind it release
    the GIL, so torch's ~2 s import can run meanwhile instead of after. Not a daemon thread:
    the interpreter joins it at exit, so a process never tears down under a half-done import.
    An import error here is dropped; the real import at first use raises it.
    """
    if name in sys.modules or name in _preloading:
        return

    def load() -> None:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - re-raised by the import at first use
            pass

    thread = threading.Thread(target=load, name=f"preload-{name}", daemon=False)
    _preloading[name] = thread
    thread.start()


torch: Any = LazyModule("torch")
