"""Where a search reports its evaluations besides the storage path: Weights & Biases (``--wandb``).

The driver calls a :class:`Tracker` after every evaluation (history line, best so far), after
every CMA-ES generation, when the best candidate changes, and at the end. :class:`WandbTracker`
logs one W&B step per evaluation (step = evaluation number, so a resumed search continues the
same curves in the same run: its id is kept in ``STORAGE/wandb.json``), a population summary
per generation, the best candidate's recipe as an artifact (as mergekit-evolve does) and a
run summary. ``wandb`` is imported only here, only when ``--wandb`` is given.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import string
from pathlib import Path
from typing import Any

from mergefile.errors import UserError

__all__ = ["DEFAULT_PROJECT", "Tracker", "WandbTracker", "evaluation_metrics"]

DEFAULT_PROJECT = "mergekit-evolve"  # mergekit-evolve's default project: runs land beside its runs
RUN_FILE = "wandb.json"


class Tracker:
    """Receives a search's events; the default does nothing."""

    def start(self) -> None: ...
    def evaluation(self, line: dict[str, Any], best: dict[str, Any] | None) -> None: ...
    def generation(self, generation: int, lines: list[dict[str, Any]], sigma: float) -> None: ...
    def new_best(self, best: dict[str, Any], recipe: Path) -> None: ...
    def finish(self, stop: str | None, best: dict[str, Any] | None, evaluations: int) -> None: ...


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _metric_name(metric: str) -> str:
    return metric.replace(",none", "").replace(",", "/")


def evaluation_metrics(line: dict[str, Any], best: dict[str, Any] | None) -> dict[str, float]:
    """One history line as W&B metrics: score, best so far, per-task metrics, parameters, timing."""
    out: dict[str, float] = {
        "evaluation": line["n"],
        "generation": line["generation"],
        "cached": float(bool(line.get("cached"))),
        "failed": float(bool(line.get("error"))),
    }
    for key in ("score", "seconds", "merge_seconds", "eval_seconds"):
        v = _number(line.get(key))
        if v is not None:
            out[key] = v
    if best is not None:
        out["best_score"] = float(best["score"])
    for task, metrics in (line.get("results") or {}).items():
        for metric, value in metrics.items():
            v = _number(value)
            if v is not None and "_stderr" not in metric:
                out[f"tasks/{task}/{_metric_name(metric)}"] = v
    for label, values in (line.get("params") or {}).items():
        values = values if isinstance(values, list) else [values]
        for g, value in enumerate(values):
            v = _number(value)
            if v is not None:
                out[f"params/{label}" + (f"/group{g}" if len(values) > 1 else "")] = v
    return out


class WandbTracker(Tracker):
    """Logs a search to a W&B run (``WANDB_MODE=offline`` works: ``wandb sync`` uploads it later)."""

    def __init__(self, storage: Path, config: dict[str, Any], project: str | None = None, entity: str | None = None):
        self.storage = Path(storage)
        self.config = config
        self.project = project or DEFAULT_PROJECT
        self.entity = entity
        self.run = None
        self.wandb = None

    def _run_id(self) -> str:
        """The search's run id: kept in the storage path, so a resumed search resumes its run."""
        path = self.storage / RUN_FILE
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("project") == self.project and saved.get("entity") == self.entity:
                return saved["id"]
        except (OSError, ValueError, KeyError, AttributeError):
            pass
        run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # as W&B's ids
        path.write_text(
            json.dumps({"id": run_id, "project": self.project, "entity": self.entity}) + "\n", encoding="utf-8"
        )
        return run_id

    def start(self) -> None:
        from mergefile.targets.evolve.preflight import require_wandb

        self.wandb = require_wandb()
        run_id = self._run_id()
        try:
            self.run = self.wandb.init(
                project=self.project,
                entity=self.entity,
                config=self.config,
                id=run_id,
                resume="allow",
                name=self.storage.name,
                job_type="evolve",
                dir=os.environ.get("WANDB_DIR") or str(self.storage),
            )
        except Exception as e:  # wandb raises its own error types (no login, no network, bad entity)
            raise UserError(
                f"--wandb: cannot start a W&B run: {type(e).__name__}: {e}",
                hint="run 'wandb login', or set WANDB_MODE=offline and 'wandb sync' later",
            ) from None
        self.run.define_metric("best_score", summary="max")

    def evaluation(self, line: dict[str, Any], best: dict[str, Any] | None) -> None:
        self.run.log(evaluation_metrics(line, best), step=line["n"])

    def generation(self, generation: int, lines: list[dict[str, Any]], sigma: float) -> None:
        """Population statistics of a finished generation, at the step of its last evaluation."""
        if not lines:
            return
        scores = [float(h["score"]) for h in lines if h.get("score") is not None]
        data: dict[str, float] = {
            "cma/sigma": float(sigma),
            "population/generation": generation,
            "population/size": len(lines),
        }
        if scores:
            mean = sum(scores) / len(scores)
            data.update(
                {
                    "population/score_mean": mean,
                    "population/score_max": max(scores),
                    "population/score_min": min(scores),
                    "population/score_std": math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores)),
                }
            )
        self.run.log(data, step=max(h["n"] for h in lines))

    def new_best(self, best: dict[str, Any], recipe: Path) -> None:
        """The best candidate so far: in the run summary, and its recipe as an artifact version."""
        self.run.summary.update(
            {"best/score": float(best["score"]), "best/evaluation": best["n"], "best/candidate": best["key"]}
        )
        if recipe.is_file():
            art = self.wandb.Artifact(
                "best_config", type="merge_config", metadata={"score": float(best["score"]), "evaluation": best["n"]}
            )
            art.add_file(str(recipe))
            mf = recipe.with_name("best.mf")
            if mf.is_file():
                art.add_file(str(mf))
            self.run.log_artifact(art)

    def finish(self, stop: str | None, best: dict[str, Any] | None, evaluations: int) -> None:
        if self.run is None:
            return
        self.run.summary.update({"stop": stop or "error", "evaluations": evaluations})
        self.run.finish(exit_code=0 if stop else 1)
        self.run = None
