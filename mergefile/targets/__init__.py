"""Target kinds: targets that are not merges, with output layouts of their own.

``out/x: lora(finetuned=ft, base=base, rank=32)`` extracts a PEFT adapter and
``out/moe: moe(base=base) { ... }`` assembles a Mixture of Experts. A kind only *plans*: it turns
its target into an ordinary :class:`~mergefile.plan.jobs.TargetPlan` (keyed tensor jobs over
input models, a config, a layout), so keys, staleness against the manifest, the blob cache, the
executor and the atomic publish are the same code that builds merges.

The one dispatch point is :meth:`mergefile.plan.planner.Planner._plan`: when a target's method
names a kind here, the kind plans it. The tensor work of a kind is a hidden merge method (a name
with ``:``, which no Mergefile can spell) found through :func:`target_method`.

Adding a kind: its module with ``KIND`` (``name``, ``plan(planner, target)``) and ``METHOD``,
and one line in each table below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from mergefile.targets import lora, moe

if TYPE_CHECKING:
    from mergefile.methods.base import Method
    from mergefile.plan.jobs import TargetPlan
    from mergefile.syntax.ast import Target

__all__ = ["MODEL_PARAMS", "TARGET_KINDS", "TargetKind", "target_method"]


class TargetKind(Protocol):
    """A target kind: plans a target of its name into keyed tensor jobs and an output layout."""

    name: str

    def plan(self, planner, target: Target) -> TargetPlan: ...


TARGET_KINDS: dict[str, TargetKind] = {lora.KIND.name: lora.KIND, moe.KIND.name: moe.KIND}

# The hidden methods doing the tensor work of the kinds ("lora:extract", "moe:assemble").
_METHODS: dict[str, Method] = {lora.METHOD.name: lora.METHOD, moe.METHOD.name: moe.METHOD}

# Parameters of kinds that name models (besides ``base``), for the target graph's edges.
MODEL_PARAMS: tuple[str, ...] = ("finetuned",)


def target_method(name: str) -> Method | None:
    """The hidden method ``name`` of a target kind, or None."""
    return _METHODS.get(name)
