"""The CMA-ES search: ask, score (cache first, then Ray), tell; checkpointed after every result.

The driver owns all state, in the storage path:

``checkpoint.pkl``  the optimizer (``cma`` pickled, its random stream included), the population
                    asked for and which of its members are scored — written after every result
``history.jsonl``   one line per evaluation: parameters, metrics, score, seconds, candidate key
``state.json``      progress and the best so far, readable without importing cma
``best.mf``         the best candidate as a Mergefile target (``final_model``)
``best_config.yaml`` the same as a mergekit YAML config
``plot.png``        score over evaluations
``input_models/``   the inputs' single-shard copies candidates are merged from (``--reshard``)
``wandb.json``      the W&B run of the search (``--wandb``), resumed with it

Evaluations are counted against ``max_fevals`` whether scored or found in the score cache, so
the search is the same run whatever was cached; a generation cut by the budget is finished by
the next run with a larger one. No candidate is scored twice: scores live in the cache's
``meta`` store under the candidate's content key and the evaluation settings.
"""

from __future__ import annotations

import json
import os
import pickle
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mergefile.errors import UserError
from mergefile.store.keys import key_of
from mergefile.syntax.ast import Sym, Target
from mergefile.targets.evolve.candidates import build_options, plan_candidate
from mergefile.targets.evolve.config import EvolveConfig
from mergefile.targets.evolve.genome import Genome
from mergefile.targets.evolve.options import EvolveOptions, SearchProgress, SearchResult, SeededNormal
from mergefile.targets.evolve.outputs import (
    FINAL,
    append_history,
    read_history,
    render_mergefile,
    render_mergekit,
    write_plot,
    write_text,
)
from mergefile.targets.evolve.scoring import ScoreSpec, combine
from mergefile.targets.evolve.worker import Job, WorkerSpec

__all__ = ["EvolveOptions", "SearchProgress", "SearchResult", "SeededNormal", "run_search", "read_state"]

CHECKPOINT_VERSION = 1
FAILED = 1e9  # objective of a candidate that cannot be built or scored (CMA-ES ranks it last)
SCORE_PREFIX = "evolve-score:"


# ---- state ---------------------------------------------------------------------------------


def read_state(storage: str | Path) -> dict[str, Any] | None:
    path = Path(storage) / "state.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def search_key(config: EvolveConfig, genome: Genome, options: EvolveOptions) -> str:
    """Identity of a search trajectory: same key, same candidates in the same order."""
    return key_of(
        "evolve-search",
        {
            **config.search_payload(),
            "num_layers": genome.num_layers,
            "sigma0": options.sigma0,
            "popsize": options.popsize,
            "seed": options.random_seed,
        },
    )


def num_layers(config: EvolveConfig, options) -> int:
    """Layer count of the genome's first model (headers and config.json only)."""
    from mergefile.plan.inputs import ResolveOptions
    from mergefile.plan.planner import Planner

    planner = Planner(
        config.mergefile(), ResolveOptions(allow_pickle=options.allow_pickle, allow_crimes=options.allow_crimes)
    )
    name, _ = config.genome.models[0]
    return planner.resolver.resolve(Sym(name)).get_layout().num_layers


class _Search:
    """One run over a storage path: resume, loop, finish."""

    def __init__(
        self,
        config: EvolveConfig,
        options: EvolveOptions,
        store,
        progress: SearchProgress,
        start_ray=None,
        merge_device: str | None = None,
    ):
        self.config, self.options, self.store, self.progress = config, options, store, progress
        self.eval_config = config  # what candidates are planned from: the inputs' copies with --reshard
        self.start_ray = start_ray
        self.storage = Path(options.storage_path).resolve()
        self.storage.mkdir(parents=True, exist_ok=True)
        self.merge_device = merge_device or options.device
        self.build_options = build_options(
            self.merge_device, options.allow_pickle, options.allow_crimes, in_memory=options.in_memory
        )
        self.genome = Genome(config.genome, num_layers(config, options))
        self.key = search_key(config, self.genome, options)
        self.score_spec = ScoreSpec(
            tasks=config.tasks,
            limit=config.limit,
            num_fewshot=config.num_fewshot,
            shuffle=config.shuffle,
            seed=options.random_seed,
            apply_chat_template=config.apply_chat_template,
            fewshot_as_multiturn=config.fewshot_as_multiturn,
            task_paths=tuple(str(Path(p).resolve()) for p in options.task_search_path),
            batch_size=options.batch_size,
            device=options.device,
            vllm=options.vllm,
            trust_remote_code=options.trust_remote_code,
            quantization=options.quantization,
        )
        self.score_payload = self.score_spec.key_payload()
        self.history_path = self.storage / "history.jsonl"
        self.history = read_history(self.history_path)
        self.strategy = None
        self.scored = 0
        self.t0 = time.monotonic()
        self.tracker = self._tracker()

    def _tracker(self):
        from mergefile.targets.evolve.tracking import Tracker

        if not self.options.wandb:
            return Tracker()
        from mergefile.targets.evolve.tracking import WandbTracker

        o = self.options
        run_config = {
            **self.config.search_payload(),
            "num_layers": self.genome.num_layers,
            "max_fevals": o.max_fevals,
            "sigma0": o.sigma0,
            "popsize": o.popsize,
            "random_seed": o.random_seed,
            "strategy": o.strategy,
            "in_memory": o.in_memory,
            "vllm": o.vllm,
            "batch_size": self.score_spec.hf_batch_size,
            "device": o.device,
            "merge_device": self.merge_device,
            "quantization": o.quantization,
            "reshard": o.reshard,
            "storage_path": str(self.storage),
            "search_key": self.key,
        }
        return WandbTracker(self.storage, run_config, o.wandb_project, o.wandb_entity)

    def _reshard(self) -> None:
        """``--reshard``: plan every candidate from copies of the inputs in the storage path."""
        from mergefile.targets.evolve.reshard import reshard_config

        self.eval_config = reshard_config(
            self.config,
            self.storage,
            allow_pickle=self.options.allow_pickle,
            allow_crimes=self.options.allow_crimes,
            convert_dir=str(Path(self.store.root) / "converted"),
            message=self.progress.message,
        )

    # -- checkpoint ---------------------------------------------------------------------------
    def _new_state(self) -> dict[str, Any]:
        import cma
        import numpy as np

        seed = self.options.random_seed
        rng = np.random.default_rng(seed) if self.config.random_init else None
        x0 = self.genome.initial(rng)
        opts = {
            "randn": SeededNormal(seed),
            "seed": np.nan,
            "verbose": -9,
            "verb_log": 0,
            "verb_disp": 0,
            # the budget stops the search: accuracy-like metrics are flat over small steps, and
            # CMA-ES's flat-fitness / tolerance tests would end it after a generation or two
            "tolflatfitness": 10**9,
            "tolfun": 0,
            "tolfunhist": 0,
        }
        if self.options.popsize:
            opts["popsize"] = self.options.popsize
        es = cma.CMAEvolutionStrategy(x0, self.options.sigma0, opts)
        return {
            "version": CHECKPOINT_VERSION,
            "key": self.key,
            "es": es,
            "generation": 0,
            "pending": None,
            "pending_f": None,
            "stop": None,
        }

    def load(self) -> dict[str, Any]:
        path = self.storage / "checkpoint.pkl"
        if not path.is_file():
            if self.history:
                raise UserError(f"{self.storage} has a history but no checkpoint.pkl: use an empty --storage-path")
            return self._new_state()
        import cma  # noqa: F401 - the pickle holds a cma object

        with open(path, "rb") as f:
            state = pickle.load(f)
        if state.get("version") != CHECKPOINT_VERSION or state.get("key") != self.key:
            raise UserError(
                f"{self.storage} holds a search of a different genome, task set or CMA-ES setting",
                None,
                "use another --storage-path (or delete that one) to start a new search",
            )
        self._reconcile(state)
        return state

    def _reconcile(self, state: dict[str, Any]) -> None:
        """A kill between a history line and its checkpoint: take the result from the history."""
        if state["pending"] is None:
            return
        for h in self.history:
            if h.get("generation") == state["generation"] and state["pending_f"][h["member"]] is None:
                state["pending_f"][h["member"]] = _objective(h)

    def save(self, state: dict[str, Any]) -> None:
        tmp = self.storage / f".checkpoint.pkl.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.storage / "checkpoint.pkl")
        best = self.best()
        write_text(
            self.storage / "state.json",
            json.dumps(
                {
                    "key": self.key,
                    "evaluations": len(self.history),
                    "generation": state["generation"],
                    "max_fevals": self.options.max_fevals,
                    "stop": state["stop"],
                    "best_n": best["n"] if best else None,
                    "best_score": best["score"] if best else None,
                },
                indent=2,
            )
            + "\n",
        )

    # -- the loop -----------------------------------------------------------------------------
    def best(self) -> dict[str, Any] | None:
        good = [h for h in self.history if h.get("score") is not None]
        # ties go to the earliest candidate of the search (not of arrival): the same search
        # picks the same best however Ray scheduled it
        return max(good, key=lambda h: (h["score"], -h["generation"], -h["member"])) if good else None

    def run(self) -> SearchResult:
        state = self.load()
        if self.options.reshard:
            self._reshard()
        self.tracker.start()
        stop = None
        try:
            best = self.best()
            self.progress.start(self.options.max_fevals, len(self.history), best["score"] if best else None)
            try:
                stop = self._loop(state)
            finally:
                if self.strategy is not None:
                    self.strategy.close()
                self.progress.end()
            state["stop"] = stop
            self.save(state)
            return self.finish(stop)
        finally:
            self.tracker.finish(stop, self.best(), len(self.history))

    def _loop(self, state: dict[str, Any]) -> str:
        es = state["es"]
        while True:
            if state["pending"] is None:
                if len(self.history) >= self.options.max_fevals:
                    return "max_fevals"
                reasons = {k: v for k, v in es.stop().items() if k not in ("maxfevals", "timeout")}
                if reasons:
                    return "cma: " + ", ".join(sorted(reasons))
                state["pending"] = [list(map(float, x)) for x in es.ask()]
                state["pending_f"] = [None] * len(state["pending"])
                self.save(state)
            todo = [i for i, f in enumerate(state["pending_f"]) if f is None]
            room = self.options.max_fevals - len(self.history)
            if todo and room <= 0:
                return "max_fevals"
            if self.options.timeout is not None and time.monotonic() - self.t0 > self.options.timeout:
                return "timeout"
            self._evaluate(state, todo[:room])
            if all(f is not None for f in state["pending_f"]):
                import numpy as np

                es.tell([np.asarray(x) for x in state["pending"]], state["pending_f"])
                done = state["generation"]
                state.update(pending=None, pending_f=None, generation=done + 1)
                self.save(state)
                self._write_plot()
                self.tracker.generation(done, [h for h in self.history if h.get("generation") == done], float(es.sigma))

    def _evaluate(self, state: dict[str, Any], members: list[int]) -> None:
        """Score ``members`` of the pending population: cache hits first, the rest on Ray."""
        jobs: list[tuple[int, Job, list[float]]] = []
        for i in members:
            x = state["pending"][i]
            t0 = time.perf_counter()
            target = self.genome.target(x, str(self.storage / "candidates" / "plan"))
            try:
                key = plan_candidate(self.eval_config, target, self.store, self.build_options).key
            except UserError as e:
                self._record(state, i, x, None, {"error": e.render()}, cached=False, seconds=time.perf_counter() - t0)
                continue
            hit = self.store.meta.get(SCORE_PREFIX + self._score_key(key))
            if hit is not None:
                self._record(state, i, x, key, hit, cached=True, seconds=time.perf_counter() - t0)
            else:
                jobs.append((i, Job(i, target, key), x))
        if not jobs:
            return
        by_member = {i: x for i, _, x in jobs}
        for job, result in self._strategy().run([j for _, j, _ in jobs]):
            cached = False
            if "results" in result:
                self.store.meta.set(
                    SCORE_PREFIX + self._score_key(job.key),
                    {"results": result["results"], "seconds": result.get("eval_seconds")},
                )
                self.scored += 1
            seconds = result.get("merge_seconds", 0.0) + result.get("eval_seconds", 0.0)
            self._record(state, job.n, by_member[job.n], job.key, result, cached=cached, seconds=seconds)

    def _score_key(self, candidate_key: str) -> str:
        return key_of("evolve-score", {"candidate": candidate_key, **self.score_payload})

    def _record(self, state, member: int, x, key, result: dict[str, Any], cached: bool, seconds: float) -> None:
        score, bad_config = None, None
        error = result.get("error")
        if error is None:
            try:
                score = combine(self.config.tasks, result["results"])
            except UserError as e:  # a metric the task does not report: no candidate can score
                error, bad_config = e.render(), e
        line = {
            "n": len(self.history) + 1,
            "generation": state["generation"],
            "member": member,
            "key": key,
            "score": score,
            "results": result.get("results"),
            "cached": cached,
            "seconds": round(seconds, 4),
            "merge_seconds": _round(result.get("merge_seconds")),
            "eval_seconds": _round(result.get("eval_seconds")),
            "x": list(x),
            "params": self.genome.describe(x),
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if result.get("pid") is not None:
            line["worker"] = result["pid"]
        if error:
            line["error"] = error
        previous = self.best()
        append_history(self.history_path, line)
        self.history.append(line)
        state["pending_f"][member] = _objective(line)
        self.save(state)
        best = self.best()
        self.tracker.evaluation(line, best)
        if best is not None and (previous is None or best["n"] != previous["n"]):
            self._write_best(best)
            self.tracker.new_best(best, self.storage / "best_config.yaml")
        self.progress.result(line, best["score"] if best else None)
        if bad_config is not None:
            raise bad_config

    def _strategy(self):
        if self.strategy is None:
            from mergefile.targets.evolve.strategies import default_workers, make_strategy

            if self.start_ray is not None:
                self.start_ray()
            gpus = self._gpus()
            spec = WorkerSpec(
                config=self.eval_config,
                score=self.score_spec,
                cache_dir=str(self.store.root),
                cache_size=self.store.blobs.size_limit,
                storage=str(self.storage),
                in_memory=self.options.in_memory,
                allow_pickle=self.options.allow_pickle,
                allow_crimes=self.options.allow_crimes,
                token=uuid.uuid4().hex,
                merge_device=self.merge_device,
            )
            workers = self.options.workers or default_workers(gpus)
            self.strategy = make_strategy(self.options.strategy, spec, workers, gpus)
            self.progress.message(
                f"evaluating on Ray: {self.options.strategy} strategy, {workers} worker(s)"
                + (f", {gpus} GPU(s)" if gpus else ", CPU only")
            )
        return self.strategy

    def _gpus(self) -> int:
        if self.options.num_gpus <= 0:
            return 0
        from mergefile._lazy import torch

        return self.options.num_gpus if torch.cuda.is_available() else 0

    # -- outputs ------------------------------------------------------------------------------
    def best_target(self, best: dict[str, Any]) -> Target:
        return self.genome.target(best["x"], FINAL)

    def _write_best(self, best: dict[str, Any]) -> None:
        target = self.best_target(best)
        tasks = ", ".join(f"{t.name} {t.metric} x{t.weight:g}" for t in self.config.tasks)
        header = [
            f"Best candidate of the evolve search in {self.storage}",
            f"score {best['score']:.6g} ({tasks}), evaluation {best['n']}, candidate {best['key']}",
            "Rebuild it: mergebuild -f best.mf   (writes final_model/ beside this file)",
        ]
        write_text(self.storage / "best.mf", render_mergefile(self.config, target, header))
        write_text(self.storage / "best_config.yaml", render_mergekit(self.config, target))
        write_text(self.storage / "best.json", json.dumps(best, indent=2, sort_keys=True) + "\n")

    def _write_plot(self) -> None:
        write_plot(
            self.storage / "plot.png",
            self.history,
            f"evolve: {self.config.genome.merge_method}, {len(self.history)} evaluations",
        )

    def finish(self, stop: str) -> SearchResult:
        self._write_plot()
        best = self.best()
        target = self.best_target(best) if best else None
        if best is not None:
            self._write_best(best)
            if self.options.save_final_model:
                from mergefile.run.build import build

                final = Target(str(self.storage / FINAL), target.method, target.params, target.sources, target.slices)
                build(self.config.mergefile(final), [final.name], self.store, self.build_options)
        return SearchResult(best, target, len(self.history), self.scored, stop, self.storage, self.history)


def _round(v: float | None) -> float | None:
    return None if v is None else round(float(v), 4)


def _objective(line: dict[str, Any]) -> float:
    return FAILED if line.get("score") is None else -float(line["score"])


def run_search(
    config: EvolveConfig, options: EvolveOptions, store, progress: SearchProgress | None = None, start_ray=None
) -> SearchResult:
    """Run (or resume) the search; Ray is needed only if some candidate is not in the score cache.

    Args:
        config: the genome and tasks (:func:`~mergefile.targets.evolve.config.load_genome_yaml`).
        options: budget, optimizer and execution settings; ``storage_path`` holds the state.
        store: the cache (blobs for candidate tensors, ``meta`` for the score cache).
        progress: receives each evaluation as it completes.
        start_ray: called before the first candidate goes to Ray (starts or joins it); without
            it Ray must already be running when there is something to score.

    Returns:
        The best evaluation and its recipe, and how the run ended.

    Example:
        >>> with ray_session(num_cpus=2), Store("cache") as store:  # doctest: +SKIP
        ...     result = run_search(load_genome_yaml("genome.yml"), EvolveOptions("evo"), store)
    """
    from mergefile.targets.evolve.preflight import preflight

    if options.max_fevals < 0:
        raise UserError("--max-fevals must be >= 0")
    merge_device = preflight(options)
    return _Search(config, options, store, progress or SearchProgress(), start_ray, merge_device).run()
