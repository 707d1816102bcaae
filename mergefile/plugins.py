"""Plug-ins: what the core finds by name instead of importing.

The stages import downwards only (``docs/architecture.md``), so the code that plans a ``lora``
target, assembles a MoE, runs an evolutionary search or applies an adapter on load cannot be
imported by the planner or the builder. Instead each plug-in module registers itself in the
tables of the stage that uses it (``mergefile.plan.kinds`` for target kinds, target generators
and on-load transforms, ``mergefile.methods.registry`` for the hidden methods doing a kind's
tensor work), and the lookups call :func:`load` first.

:func:`load` imports the built-in plug-ins (``mergefile.targets``) and every module named by an
entry point of the group ``mergebuild.plugins`` of an installed distribution, once per process:
a separate package adds a target kind with one entry point, no change here.
"""

from __future__ import annotations

import importlib
import threading

__all__ = ["BUILTIN", "GROUP", "load"]

GROUP = "mergebuild.plugins"
BUILTIN = ("mergefile.targets",)
_lock = threading.RLock()  # re-entered when a plug-in looks something up while it loads
_loaded = False


def load() -> None:
    """Import the built-in plug-ins and the installed ones (entry points), once."""
    global _loaded
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        from importlib.metadata import entry_points

        names = list(BUILTIN) + [ep.value for ep in entry_points(group=GROUP) if ep.value not in BUILTIN]
        for name in names:
            importlib.import_module(name)
        _loaded = True
