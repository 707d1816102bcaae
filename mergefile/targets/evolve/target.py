"""The ``evolve`` target of a Mergefile: a target generator that becomes its best candidate.

::

    model base = "./models/base"
    model math = "./models/math"
    model code = "./models/code"

    out/best: evolve(ties, base=base, models=[math, code]) {
        layer_granularity = 8
        budget = 100                          # evaluations (--max-fevals)
        task_path = "tasks"                   # folder of custom lm-eval tasks
        my_task weight=1 metric="acc,none"    # one task per line (weight, metric optional)
    }

No grammar change: the merge method is the call's positional argument (``Target.args``),
settings are block parameters, and each task is a source line (name, then its parameters).

Before planning (:func:`mergefile.run.build.plan_build`), each needed evolve target runs its
search (resuming from its storage folder) and is replaced by its best candidate, an ordinary
merge target of the same name; the build then writes it like any other. A finished search is
not run again: a rebuild reads its state and is a no-op. A dry run (``-n``, ``graph``, ...)
never searches: it shows the best candidate so far (or the initial one).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mergefile.errors import ConfigError, Loc, unknown
from mergefile.plan.kinds import register_generator
from mergefile.syntax.ast import HfRef, Mergefile, ModelDecl, Param, PathRef, Sym, Target
from mergefile.targets.evolve.config import METHOD_PARAMS, EvolveConfig, GenomeDef, TaskSpec, check_benchmarks, validate

__all__ = ["EVOLVE", "config_from_target", "expand_evolve_targets"]

EVOLVE = "evolve"
GENOME_PARAMS = (
    "method",
    "base",
    "models",
    "tokenizer_source",
    "layer_granularity",
    "normalize",
    "allow_negative_weights",
    "smooth",
    "filters",
    "dtype",
)
EVAL_PARAMS = (
    "limit",
    "num_fewshot",
    "shuffle",
    "random_init",
    "apply_chat_template",
    "fewshot_as_multiturn",
    "task_path",
)
RUN_PARAMS = (
    "budget",
    "sigma0",
    "popsize",
    "seed",
    "timeout",
    "strategy",
    "in_memory",
    "vllm",
    "workers",
    "num_gpus",
    "batch_size",
    "storage",
    "ray_address",
    "allow_benchmarks",
    "reshard",
    "load_in_8bit",
    "load_in_4bit",
    "wandb",
    "wandb_project",
    "wandb_entity",
)
ALL_PARAMS = GENOME_PARAMS + EVAL_PARAMS + RUN_PARAMS
TASK_PARAMS = ("weight", "metric")
_SAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


def _params(t: Target) -> dict[str, Param]:
    out: dict[str, Param] = {}
    for p in t.params:
        if p.name not in ALL_PARAMS:
            raise unknown("evolve setting", p.name, ALL_PARAMS, p.loc)
        if p.filter is not None:
            raise ConfigError(f"evolve setting '{p.name}' takes no [filter]", p.loc)
        out[p.name] = p  # a block line may restate a call keyword: the later one wins
    return out


def _word(p: Param | None, default: Any = None) -> Any:
    if p is None:
        return default
    return p.value.name if isinstance(p.value, Sym) else p.value


def _typed(p: Param | None, kind, default: Any = None, what: str = "") -> Any:
    if p is None:
        return default
    v = p.value
    ok = isinstance(v, kind) and not (kind is not bool and isinstance(v, bool))
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        ok, v = True, float(v)
    if not ok:
        raise ConfigError(f"evolve setting '{p.name}' must be {what or kind.__name__}, got {v!r}", p.loc)
    return v


def _model(value: Any, loc: Loc | None, taken: set[str], decls: list[ModelDecl]) -> tuple[str, Any]:
    """A model of the genome: a declared name, or a path/hf() given inline (declared here)."""
    if isinstance(value, Sym):
        return value.name, value
    if isinstance(value, str):
        value = PathRef(value, loc)
    if not isinstance(value, (PathRef, HfRef)):
        raise ConfigError(f'not a model: {value!r} (use a model name, a "path" or hf("org/id"))', loc)
    stem = _SAFE.sub("_", (value.path if isinstance(value, PathRef) else value.repo).rstrip("/").rsplit("/", 1)[-1])
    name, i = f"evolve_{stem}", 2
    while name in taken:
        name, i = f"evolve_{stem}_{i}", i + 1
    taken.add(name)
    decls.append(ModelDecl(name, value, loc))
    return name, Sym(name, loc)


def config_from_target(t: Target, mf: Mergefile) -> tuple[EvolveConfig, dict[str, Any]]:
    """The search of an ``evolve`` target, and its run settings (budget, storage, Ray, ...).

    Raises:
        ConfigError: unknown settings, no method or models, bad task lines, slices.
    """
    p = _params(t)
    if t.slices or getattr(t, "modules", ()):
        raise ConfigError("an evolve target has task lines and settings, not slices or modules", t.loc)
    method = _word(p.get("method"))
    if t.args:
        if len(t.args) > 1 or method is not None:
            raise ConfigError("evolve takes one positional argument: the merge method", t.method_loc or t.loc)
        method = t.args[0].name if isinstance(t.args[0], Sym) else t.args[0]
    if not isinstance(method, str):
        raise ConfigError("evolve needs a merge method: evolve(ties, base=..., models=[...])", t.method_loc or t.loc)
    if method not in METHOD_PARAMS:
        raise unknown("evolve merge method", method, METHOD_PARAMS, t.method_loc or t.loc)
    taken = {s.name for s in mf.statements if isinstance(s, (ModelDecl, Target))}
    decls: list[ModelDecl] = []
    mp = p.get("models")
    models_v = mp.value if mp is not None else None
    if not isinstance(models_v, tuple) or not models_v:
        raise ConfigError("evolve needs models=[a, b, ...]", mp.loc if mp else t.loc)
    models = tuple(_model(v, mp.loc, taken, decls) for v in models_v)
    base = _model(p["base"].value, p["base"].loc, taken, decls) if "base" in p else None
    tok = p.get("tokenizer_source")
    tok_v = None
    if tok is not None:
        tok_v = (
            tok.value
            if isinstance(tok.value, Sym) and tok.value.name in ("base", "union")
            else _model(tok.value, tok.loc, taken, decls)
        )
    filters = _typed(p.get("filters"), tuple, (), "a list of tensor-name substrings")
    if not all(isinstance(f, (str, Sym)) for f in filters):
        raise ConfigError("filters must be a list of tensor-name substrings", p["filters"].loc)
    genome = GenomeDef(
        models=models,
        merge_method=method,
        base_model=base,
        tokenizer_source=tok_v,
        layer_granularity=_typed(p.get("layer_granularity"), int, 0, "an integer"),
        normalize=_typed(p.get("normalize"), bool, None, "true or false"),
        allow_negative_weights=_typed(p.get("allow_negative_weights"), bool, False, "true or false"),
        smooth=_typed(p.get("smooth"), bool, False, "true or false"),
        filters=tuple(f.name if isinstance(f, Sym) else f for f in filters),
        dtype=_word(p.get("dtype"), "bfloat16"),
    )
    tasks = tuple(_task(s) for s in t.sources)
    keep = tuple(s for s in mf.statements if not (isinstance(s, Target) and s.method == EVOLVE))
    act = _word(p.get("apply_chat_template"), True)
    config = EvolveConfig(
        genome=genome,
        tasks=tasks,
        limit=_typed(p.get("limit"), (int, float), None, "a number"),
        num_fewshot=_typed(p.get("num_fewshot"), int, None, "an integer"),
        shuffle=_typed(p.get("shuffle"), bool, False, "true or false"),
        random_init=_typed(p.get("random_init"), bool, False, "true or false"),
        apply_chat_template=act,
        fewshot_as_multiturn=_typed(p.get("fewshot_as_multiturn"), bool, True, "true or false"),
        path=mf.path,
        statements=tuple(decls) + keep,
    )
    validate(config, t.loc)
    here = Path(t.loc.file).parent if t.loc and t.loc.file not in ("<string>", "") else Path(mf.path).resolve().parent
    paths = _typed(p.get("task_path"), (str, tuple), (), "a folder or a list of folders")
    paths = (paths,) if isinstance(paths, str) else paths
    run = {
        "max_fevals": _typed(p.get("budget"), int, 100, "an integer"),
        "sigma0": _typed(p.get("sigma0"), float, 1 / 6, "a number"),
        "popsize": _typed(p.get("popsize"), int, None, "an integer"),
        "random_seed": _typed(p.get("seed"), int, 0, "an integer"),
        "timeout": _typed(p.get("timeout"), float, None, "a number of seconds"),
        "strategy": _word(p.get("strategy"), "pool"),
        "in_memory": _typed(p.get("in_memory"), bool, False, "true or false"),
        "vllm": _typed(p.get("vllm"), bool, False, "true or false"),
        "workers": _typed(p.get("workers"), int, None, "an integer"),
        "num_gpus": _typed(p.get("num_gpus"), int, 0, "an integer"),
        "batch_size": _word(p.get("batch_size")),
        "task_search_path": tuple(str((here / x).resolve()) for x in paths),
        "storage": str(here / p["storage"].value) if "storage" in p else None,
        "ray_address": _word(p.get("ray_address")),
        "allow_benchmarks": _typed(p.get("allow_benchmarks"), bool, False, "true or false"),
        # a build reads its inputs in place: copying them is asked for (unlike mergekit-evolve's CLI)
        "reshard": _typed(p.get("reshard"), bool, False, "true or false"),
        "quantization": _quantization(p),
        "wandb": _typed(p.get("wandb"), bool, False, "true or false"),
        "wandb_project": _typed(p.get("wandb_project"), str, None, "a string"),
        "wandb_entity": _typed(p.get("wandb_entity"), str, None, "a string"),
    }
    return config, run


def _quantization(p: dict[str, Param]) -> str | None:
    bits = [b for b in ("8bit", "4bit") if _typed(p.get(f"load_in_{b}"), bool, False, "true or false")]
    if len(bits) > 1:
        raise ConfigError("load_in_8bit and load_in_4bit exclude each other", p["load_in_4bit"].loc)
    return bits[0] if bits else None


def _task(s) -> TaskSpec:
    name = s.ref.name if isinstance(s.ref, Sym) else getattr(s.ref, "path", None)
    if not isinstance(name, str) or s.layers is not None:
        raise ConfigError('a task line is an lm-eval task name, then weight=... metric="..."', s.loc)
    weight, metric = 1.0, "acc,none"
    for p in s.params:
        if p.name not in TASK_PARAMS or p.filter is not None:
            raise unknown("task setting", p.name, TASK_PARAMS, p.loc)
        if p.name == "weight":
            if isinstance(p.value, bool) or not isinstance(p.value, (int, float)):
                raise ConfigError(f"task weight must be a number, got {p.value!r}", p.loc)
            weight = float(p.value)
        else:
            if not isinstance(p.value, str):
                raise ConfigError(f'task metric must be a string like "acc,none", got {p.value!r}', p.loc)
            metric = p.value
    return TaskSpec(name, weight, metric)


def _storage(t: Target, config: EvolveConfig, run: dict[str, Any], store) -> Path:
    if run["storage"]:
        return Path(run["storage"])
    from mergefile.store.keys import key_of

    payload = {
        **config.search_payload(),
        "sigma0": run["sigma0"],
        "popsize": run["popsize"],
        "seed": run["random_seed"],
    }
    if run.get("quantization"):  # quantized scores steer another search (absent when off: old ids stay)
        payload["quantization"] = run["quantization"]
    ident = key_of("evolve-target", payload)
    return Path(store.root) / "evolve" / f"{_SAFE.sub('_', t.name).strip('_')}-{ident[:12]}"


class _BuildProgress:
    """Search events as build progress messages."""

    def __init__(self, name: str, progress):
        self.name, self.progress = name, progress

    def start(self, total: int, done: int, best) -> None:
        if done < total:
            self.progress.message(f"{self.name}: evolve search, {done} of {total} evaluations done")

    def result(self, line: dict, best) -> None:
        last = "error" if line.get("error") else f"{line['score']:.4g}" + (" (cached)" if line["cached"] else "")
        self.progress.message(
            f"{self.name}: evaluation {line['n']}: {last}, best {best:.4g}"
            if best is not None
            else f"{self.name}: evaluation {line['n']}: {last}"
        )

    def message(self, text: str) -> None:
        self.progress.message(f"{self.name}: {text}")

    def end(self) -> None: ...


def expand_evolve_targets(mf: Mergefile, requested: Sequence[str], store, options, progress=None) -> Mergefile:
    """``mf`` with each needed evolve target replaced by its best candidate (searching first).

    Args:
        mf: the recipe; returned unchanged when it has no evolve target.
        requested: the targets being built (only evolve targets they need are searched).
        store: the build's cache (candidate tensors, scores; default storage under it).
        options: the build's ``BuildOptions`` (device, dry run, pickle/crimes switches).
        progress: the build's progress (messages per evaluation), or None.
    """
    from mergefile.plan.graph import build_graph, build_order
    from mergefile.run.build import Progress

    evolves = [s for s in mf.statements if isinstance(s, Target) and s.method == EVOLVE]
    if not evolves:
        return mf
    needed = set(build_order(mf, build_graph(mf), requested))
    progress = progress or Progress()
    extra: list[ModelDecl] = []
    replaced: dict[str, Target] = {}
    with contextlib.ExitStack() as stack:
        for t in evolves:
            if t.name not in needed:
                continue
            config, run = config_from_target(t, mf)
            for w in check_benchmarks(config, run["allow_benchmarks"]):
                progress.message(f"warning: {t.name}: {w}")
            best = _best(t, config, run, store, options, progress, stack)
            replaced[t.name] = Target(
                t.name, best.method, best.params, best.sources, best.slices, (), t.loc, t.method_loc, t.origin
            )
            extra += [
                d
                for d in config.statements
                if isinstance(d, ModelDecl)
                and d.name.startswith("evolve_")
                and d not in extra
                and d.name not in mf.models()
            ]
    statements = tuple(extra) + tuple(
        replaced.get(getattr(s, "name", None), s) if isinstance(s, Target) else s for s in mf.statements
    )
    return Mergefile(mf.path, statements)


def _best(t: Target, config: EvolveConfig, run: dict[str, Any], store, options, progress, stack) -> Target:
    from mergefile.targets.evolve.search import EvolveOptions, read_state, run_search

    storage = _storage(t, config, run, store)
    evo = EvolveOptions(
        storage_path=str(storage),
        max_fevals=run["max_fevals"],
        sigma0=run["sigma0"],
        popsize=run["popsize"],
        timeout=run["timeout"],
        random_seed=run["random_seed"],
        strategy=run["strategy"],
        in_memory=run["in_memory"],
        vllm=run["vllm"],
        workers=run["workers"],
        num_gpus=run["num_gpus"],
        batch_size=run["batch_size"],
        task_search_path=run["task_search_path"],
        device=options.device,
        save_final_model=False,
        allow_crimes=getattr(options, "allow_crimes", False),
        allow_pickle=options.allow_pickle,
        reshard=run["reshard"],
        quantization=run["quantization"],
        wandb=run["wandb"],
        wandb_project=run["wandb_project"],
        wandb_entity=run["wandb_entity"],
    )
    state = read_state(storage)
    stop = (state or {}).get("stop") or ""
    finished = stop.startswith("cma:") or (stop == "max_fevals" and state["evaluations"] >= run["max_fevals"])
    if options.dry_run or finished:
        return _current_best(config, evo, storage, state, progress, t.name, searched=finished)

    def start_ray() -> None:
        from mergefile.run.ray_executor import ray_session

        stack.enter_context(ray_session(run["ray_address"]))

    result = run_search(config, evo, store, _BuildProgress(t.name, progress), start_ray=start_ray)
    if result.target is None:
        raise ConfigError(
            f"evolve target '{t.name}': no candidate could be built and scored (see {storage / 'history.jsonl'})", t.loc
        )
    return result.target


def _current_best(config, evo, storage: Path, state, progress, name: str, searched: bool) -> Target:
    """The best candidate so far (``best.json``), else the search's initial candidate."""
    import json

    from mergefile.targets.evolve.genome import Genome
    from mergefile.targets.evolve.search import num_layers

    genome = Genome(config.genome, num_layers(config, evo))
    best_path = storage / "best.json"
    if best_path.is_file():
        best = json.loads(best_path.read_text(encoding="utf-8"))
        if not searched:
            progress.message(
                f"{name}: evolve search not finished ({state['evaluations'] if state else 0} of "
                f"{evo.max_fevals} evaluations): showing the best so far"
            )
        return genome.target(best["x"], "final_model")
    progress.message(f"{name}: evolve search not run yet: showing its initial candidate")
    return genome.target(genome.initial(), "final_model")


register_generator(EVOLVE, expand_evolve_targets)
