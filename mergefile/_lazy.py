"""Import heavy libraries on first use.

Planning a build — the whole of a no-op rebuild — needs no tensor library, and importing torch
costs seconds. Modules on that path bind ``torch`` to this proxy; the first attribute access
(``torch.float32``, ``torch.Tensor``) imports the real module, and later accesses are a dict
lookup away. Annotations stay plain (``from __future__ import annotations`` keeps them lazy).
"""

from __future__ import annotations

import importlib
import sys
import threading
from types import ModuleType
from typing import Any


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
