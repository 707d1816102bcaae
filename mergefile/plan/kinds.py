"""The plug-in protocols of the planning stage, and their one registry.

Three things plug in here, each registered by its own module (``mergefile.targets``), never
imported by the core (``mergefile.plugins``):

* a **target kind** (``lora(...)``, ``moe(...)``): a target that is not a merge. It plans its
  target into an ordinary :class:`~mergefile.plan.jobs.TargetPlan` (keyed tensor jobs over input
  models, a config, an output layout), so keys, staleness, the cache, the executor and the
  atomic publish are the code that builds merges. Its tensor work is a hidden merge method
  (a name with ``:``, which no recipe can spell), registered with the methods.
* a **target generator** (``evolve(...)``): before planning, it replaces its targets with
  ordinary ones (the best candidate of a search).
* an **on-load transform** (``BASE + ADAPTER``): an input model whose tensors are derived from
  another's when read (a LoRA applied on load).

Adding a kind: a module with a class satisfying :class:`TargetKind`, ``register_kind(KIND)`` at
its end, and its test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from mergefile import plugins
from mergefile.methods.registry import register_hidden

if TYPE_CHECKING:
    from mergefile.errors import Loc
    from mergefile.methods.base import Method
    from mergefile.plan.inputs import InputModel
    from mergefile.plan.jobs import TargetPlan
    from mergefile.plan.planner import Planner
    from mergefile.syntax.ast import Mergefile, Target

__all__ = [
    "Generator",
    "OnLoad",
    "TargetKind",
    "generators",
    "kind",
    "on_load",
    "register_generator",
    "register_kind",
    "register_on_load",
]


class TargetKind(Protocol):
    """A target kind: plans a target of its name into keyed tensor jobs and an output layout.

    ``plan`` may use the planner's public methods (``setting``, ``model_setting``,
    ``dtype_setting``, ``resolver``, ``base_dir``, ``job_factory``); ``method`` is the hidden
    method its jobs name.
    """

    name: str
    method: Method

    def plan(self, planner: Planner, target: Target) -> TargetPlan: ...


# expand(mergefile, requested targets, store, build options, progress) -> the Mergefile without them
Generator = Callable[["Mergefile", Sequence[str], Any, Any, Any], "Mergefile"]
# transform(base model, adapter folder, label, location) -> the derived input model
OnLoad = Callable[["InputModel", str, str, "Loc | None"], "InputModel"]

_KINDS: dict[str, TargetKind] = {}
_GENERATORS: dict[str, Generator] = {}
_ON_LOAD: dict[str, OnLoad] = {}


def register_kind(k: TargetKind) -> TargetKind:
    """Make ``k`` plan the targets whose method is ``k.name``; its hidden method becomes known."""
    _KINDS[k.name] = k
    register_hidden(k.method)
    return k


def register_generator(name: str, expand: Generator) -> None:
    """Make ``expand`` replace the targets whose method is ``name`` before planning."""
    _GENERATORS[name] = expand


def register_on_load(name: str, transform: OnLoad) -> None:
    """Make ``transform`` derive input models of the ``name`` kind (``"lora"``: BASE + ADAPTER)."""
    _ON_LOAD[name] = transform


def kind(name: str) -> TargetKind | None:
    """The target kind called ``name``, or None (a merge method, or unknown)."""
    plugins.load()
    return _KINDS.get(name)


def generators() -> dict[str, Generator]:
    """Every target generator, by the method name it expands."""
    plugins.load()
    return dict(_GENERATORS)


def on_load(name: str) -> OnLoad:
    """The on-load transform ``name``."""
    plugins.load()
    return _ON_LOAD[name]
