"""The one table of merge methods. Adding a method: its module, one line here, its test."""

from __future__ import annotations

from mergefile.errors import Loc, unknown
from mergefile.methods import (
    arcee_fusion,
    consensus,
    gta,
    iso,
    karcher,
    linear,
    magmax,
    model_stock,
    multislerp,
    nearswap,
    nuslerp,
    passthrough,
    pcb,
    ram,
    sce,
    slerp,
    tsv,
    wudi,
)
from mergefile.methods.base import Method

_ALL: tuple[Method, ...] = (
    linear.METHOD,
    *gta.METHODS,  # task_arithmetic, ties, dare_ties, dare_linear, breadcrumbs(_ties), della(_linear)
    slerp.METHOD,
    nuslerp.METHOD,
    multislerp.METHOD,
    karcher.METHOD,
    sce.METHOD,
    *ram.METHODS,  # ram, ramplus_tl
    model_stock.METHOD,
    nearswap.METHOD,
    arcee_fusion.METHOD,
    passthrough.METHOD,
    # mergebuild extensions (issue 19): data-free methods mergekit does not offer
    tsv.METHOD,
    *iso.METHODS,  # iso_c, iso_cts
    *consensus.METHODS,  # consensus_ta, consensus_ties
    magmax.METHOD,
    pcb.METHOD,
    wudi.METHOD,
)

METHODS: dict[str, Method] = {m.name: m for m in _ALL}
if len(METHODS) != len(_ALL):
    raise RuntimeError("two merge methods share a name")

_LOOKUP: dict[str, Method] = {**{a: m for m in _ALL for a in m.aliases}, **METHODS}


# The tensor work of target kinds ("lora:extract", "moe:assemble"): registered by the kinds'
# modules (mergefile.plan.kinds), never spelled in a recipe, so never suggested either.
_HIDDEN: dict[str, Method] = {}


def register_hidden(method: Method) -> None:
    """Make a plug-in's method known by its name, which must contain ``:``."""
    if ":" not in method.name:
        raise ValueError(f"a plug-in's method name needs a ':' (it is not a merge method): {method.name}")
    _HIDDEN[method.name] = method


def get_method(name: str, loc: Loc | None = None) -> Method:
    """The method called ``name`` (or one of its aliases), or a located error with a suggestion."""
    try:
        return _LOOKUP[name]
    except KeyError:
        if ":" in name:  # a task shipped to a process that has not loaded the plug-ins yet
            from mergefile import plugins

            plugins.load()
            if name in _HIDDEN:
                return _HIDDEN[name]
        raise unknown("merge method", name, METHODS, loc) from None
