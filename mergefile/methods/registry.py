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


def get_method(name: str, loc: Loc | None = None) -> Method:
    """The method called ``name`` (or one of its aliases), or a located error with a suggestion."""
    try:
        return _LOOKUP[name]
    except KeyError:
        if ":" in name:  # the tensor work of a target kind ("lora:extract"), never spelled in a recipe
            from mergefile.targets import target_method

            method = target_method(name)
            if method is not None:
                return method
        raise unknown("merge method", name, METHODS, loc) from None
