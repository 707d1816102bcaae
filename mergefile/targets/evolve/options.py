"""What a search is told (options), what it tells its caller (progress), and what it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergefile.syntax.ast import Target

__all__ = ["EvolveOptions", "SearchProgress", "SearchResult", "SeededNormal"]


@dataclass(frozen=True)
class EvolveOptions:
    """How a search runs (its definition is the :class:`EvolveConfig`)."""

    storage_path: str
    max_fevals: int = 100
    sigma0: float = 1 / 6
    popsize: int | None = None
    timeout: float | None = None
    random_seed: int = 0
    strategy: str = "pool"
    in_memory: bool = False
    vllm: bool = False
    workers: int | None = None
    num_gpus: int = 0
    batch_size: int | str | None = None
    task_search_path: tuple[str, ...] = ()
    device: str = "cpu"
    save_final_model: bool = True
    allow_crimes: bool = False
    allow_pickle: bool = False
    trust_remote_code: bool = False
    merge_cuda: bool | None = None  # merge on the GPU (True), the CPU (False), or on ``device`` (None)
    reshard: bool = True  # copy the inputs into STORAGE/input_models first (mergekit's default)
    quantization: str | None = None  # "8bit" | "4bit": evaluate the model quantized (bitsandbytes)
    wandb: bool = False  # log every evaluation to Weights & Biases
    wandb_project: str | None = None
    wandb_entity: str | None = None


class SearchProgress:
    """What a search tells its caller (the CLI renders it with rich)."""

    def start(self, total: int, done: int, best: float | None) -> None: ...
    def result(self, line: dict[str, Any], best: float | None) -> None: ...
    def message(self, text: str) -> None: ...
    def end(self) -> None: ...


@dataclass
class SearchResult:
    best: dict[str, Any] | None  # the best history line
    target: Target | None  # its candidate recipe (named final_model)
    evaluations: int
    scored: int  # evaluations that ran lm-eval in this run (the rest were cache hits)
    stop: str
    storage: Path
    history: list[dict[str, Any]] = field(default_factory=list)


class SeededNormal:
    """CMA-ES's ``randn`` from a seeded NumPy generator: pickled with the optimizer, so a resumed
    search draws exactly what an uninterrupted one would have drawn."""

    def __init__(self, seed: int):
        import numpy as np

        self.rng = np.random.default_rng(seed)

    def __call__(self, *shape):
        return self.rng.standard_normal(shape)
