"""Evolve: a target generator. CMA-ES proposes merge recipes, lm-eval scores them, Ray runs them.

Every candidate is an ordinary merge target built through the planner, the content keys and the
blob cache (so shared tensors are cache hits); its score is cached under its content key, so no
merge is evaluated twice; the best one is written back as a recipe (``best.mf``, and mergekit
YAML). Entry points: ``mergebuild evolve genome.yml --storage-path DIR`` (the mergekit-evolve
file, unchanged) and an ``evolve(...)`` target in a Mergefile (see ``docs/evolve.md``).

Modules: ``config`` (the two front ends), ``genome`` (genotype -> Target), ``candidates``
(plan/key/build), ``scoring`` (lm-eval), ``worker`` and ``strategies`` (Ray), ``search`` (the
CMA-ES loop, checkpoint, history, score cache), ``outputs`` (best.mf, YAML, plot), ``target``
(the Mergefile ``evolve`` target), ``preflight`` (what the options need from the machine),
``reshard`` (input copies in the storage path), ``quantize`` (bitsandbytes evaluation),
``tracking`` (Weights & Biases). Nothing here imports torch, lm_eval, ray, cma, bitsandbytes or
wandb at import.

Example:
    >>> from mergefile.targets.evolve import EvolveOptions, load_genome_yaml, run_search
    >>> with ray_session(num_cpus=2), Store("cache") as store:  # doctest: +SKIP
    ...     result = run_search(load_genome_yaml("genome.yml"), EvolveOptions("evo"), store)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EvolveConfig": "config",
    "GenomeDef": "config",
    "TaskSpec": "config",
    "load_genome_yaml": "config",
    "Genome": "genome",
    "EvolveOptions": "search",
    "SearchProgress": "search",
    "SearchResult": "search",
    "run_search": "search",
    "Scorer": "scoring",
    "ScoreSpec": "scoring",
    "expand_evolve_targets": "target",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
