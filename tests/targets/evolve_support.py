"""Shared by the evolve tests: tiny models, the local lm-eval task, a genome file writer."""

from __future__ import annotations

from pathlib import Path

from mergefile.demo import make_llama

TASK_DIR = Path(__file__).resolve().parents[1] / "data" / "evolve_task"
TASK = "evolve_tiny"


def make_evolve_models(root: Path) -> dict[str, Path]:
    """A base and two fine-tunes far enough apart that merges score differently.

    The demo tokenizer ships a chat template; it is removed here so that these models have none
    (and evaluation must not apply one).
    """
    base = make_llama(root / "base", seed=0)
    models = {"base": base}
    for seed, name in ((1, "a"), (2, "b")):
        models[name] = make_llama(root / name, seed=seed, base=base, delta_scale=0.2)
    for path in models.values():
        (path / "chat_template.jinja").unlink(missing_ok=True)
    return models


def write_genome(path: Path, models: dict[str, Path], method: str = "ties", **extra) -> Path:
    """A mergekit-evolve genome file over the tiny models and the local task."""
    lines = [
        "genome:",
        "  models:",
        f"    - {models['a']}",
        f"    - {models['b']}",
        f"  merge_method: {method}",
        f"  base_model: {models['base']}",
        "  layer_granularity: 2",
        "  dtype: float32",
    ]
    lines += [f"  {k}: {v}" for k, v in extra.items()]
    lines += ["tasks:", f"  - name: {TASK}", "    weight: 1.0", '    metric: "acc,none"']
    path.write_text("\n".join(lines) + "\n")
    return path
