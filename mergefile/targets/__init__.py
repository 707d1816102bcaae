"""Target kinds and other plug-ins: targets that are not merges, with output layouts of their own.

``out/x: lora(finetuned=ft, base=base, rank=32)`` extracts a PEFT adapter,
``out/moe: moe(base=base) { ... }`` assembles a Mixture of Experts, ``evolve(...)`` is a target
generator, and ``BASE + ADAPTER`` applies a LoRA on load. Each module registers itself in
:mod:`mergefile.plan.kinds` when imported; :func:`mergefile.plugins.load` imports this package,
so the core never names a module here.

Adding a kind: its module (a class with ``name``, ``method`` and ``plan(planner, target)``,
then ``register_kind(KIND)``), one import line below, and its test.
"""

from __future__ import annotations

from mergefile.targets import lora, lora_input, moe  # noqa: F401  (they register)
from mergefile.targets.evolve import target  # noqa: F401

__all__: list[str] = []
