"""What an evolve search is: the genome, the tasks and the evaluation settings, from either front end.

Two spellings give the same :class:`EvolveConfig`:

* the mergekit-evolve YAML file, accepted unchanged (``mergebuild evolve genome.yml``)::

      genome: {models: [...], merge_method: ties, base_model: ..., layer_granularity: 8, ...}
      tasks: [{name: my_task, weight: 1.0, metric: "acc,none"}]
      limit: 100

* an ``evolve`` target in a Mergefile (see ``docs/evolve.md``)::

      out/best: evolve(ties, base=base, models=[math, code]) {
          layer_granularity = 8
          budget = 100
          my_task weight=1 metric="acc,none"      # one task per line
      }

Model references stay AST references (``Sym``/``PathRef``/``HfRef``/``AutoRef``): a candidate is
a Target over them, planned by the ordinary planner.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergefile.errors import ConfigError, Loc, unknown
from mergefile.syntax.ast import AutoRef, HfRef, Mergefile, ModelDecl, PathRef, Ref, Sym

__all__ = [
    "EvolveConfig",
    "GenomeDef",
    "METHOD_PARAMS",
    "TaskSpec",
    "check_benchmarks",
    "load_genome_yaml",
    "genome_yaml_text",
]

# Genotype parameters per merge method (mergekit-evolve's METHOD_PARAM_MAPS): weight first.
METHOD_PARAMS: dict[str, tuple[str, ...]] = {
    "linear": ("weight",),
    "task_arithmetic": ("weight",),
    "ties": ("weight", "density"),
    "dare_ties": ("weight", "density"),
    "slerp": ("t",),
}
NEEDS_BASE = ("task_arithmetic", "ties", "dare_ties")
GENOME_KEYS = (
    "models",
    "merge_method",
    "base_model",
    "tokenizer_source",
    "layer_granularity",
    "normalize",
    "allow_negative_weights",
    "filters",
    "smooth",
    "dtype",
)  # ("dtype" is a mergebuild extension; mergekit always merges in bfloat16)
TOP_KEYS = (
    "genome",
    "tasks",
    "limit",
    "num_fewshot",
    "shuffle",
    "random_init",
    "apply_chat_template",
    "fewshot_as_multiturn",
)
TASK_KEYS = ("name", "weight", "metric")
# Common benchmarks: optimizing against their test sets is refused unless explicitly allowed
# (mergekit-evolve's --i-understand-the-depths-of-the-evils-i-am-unleashing).
BENCHMARK_PREFIXES = (
    "mmlu",
    "hendrycks",
    "agieval",
    "gsm8k",
    "hellaswag",
    "winogrande",
    "arc_",
    "ai2_arc",
    "truthfulqa",
    "bigbench",
    "piqa",
    "openbookqa",
    "leaderboard",
)
_NAME = re.compile(r"[^A-Za-z0-9_.\-]+")


@dataclass(frozen=True)
class TaskSpec:
    """One lm-eval task of the objective: ``score += weight * results[name][metric]``.

    A negative weight makes a lower-is-better metric (perplexity) count the right way.
    """

    name: str
    weight: float = 1.0
    metric: str = "acc,none"


@dataclass(frozen=True)
class GenomeDef:
    """The search space (mergekit-evolve's ``genome:``), models as named AST references.

    ``models`` and ``base_model`` are ``(name, ref)`` pairs; the names are the model names of
    the candidate recipes (Mergefile model names, or derived from YAML paths).
    """

    models: tuple[tuple[str, Ref], ...]
    merge_method: str
    base_model: tuple[str, Ref] | None = None
    tokenizer_source: Any = None  # None, Sym("base"/"union"), or a (name, ref) pair
    layer_granularity: int = 0
    normalize: bool | None = None
    allow_negative_weights: bool = False
    smooth: bool = False
    filters: tuple[str, ...] = ()
    dtype: str | None = "bfloat16"

    @property
    def params(self) -> tuple[str, ...]:
        return METHOD_PARAMS[self.merge_method]


@dataclass(frozen=True)
class EvolveConfig:
    """A whole search definition: genome, tasks, and how each candidate is evaluated.

    ``apply_chat_template``: ``True`` (mergekit's default) applies the tokenizer's chat template
    when it has one and evaluates plainly when it has none; ``False`` never applies one; a
    string names the template to apply (lm-eval's ``apply_chat_template="name"``).
    ``statements``: the model declarations (and other targets) the references are resolved
    against; ``path`` is the file they came from (relative paths resolve beside it).
    """

    genome: GenomeDef
    tasks: tuple[TaskSpec, ...]
    limit: int | float | None = None
    num_fewshot: int | None = None
    shuffle: bool = False
    random_init: bool = False
    apply_chat_template: bool | str = True
    fewshot_as_multiturn: bool = True
    path: str = "<string>"
    statements: tuple = field(default=(), compare=False)

    def mergefile(self, *extra) -> Mergefile:
        """The declarations plus ``extra`` statements, as a Mergefile the planner can plan."""
        return Mergefile(self.path, tuple(self.statements) + tuple(extra))

    def search_payload(self) -> dict[str, Any]:
        """What defines the search (for the checkpoint's identity): everything but file paths."""
        g = self.genome
        return {
            "models": [name for name, _ in g.models],
            "refs": [_ref_text(r) for _, r in g.models],
            "base": _ref_text(g.base_model[1]) if g.base_model else None,
            "method": g.merge_method,
            "tokenizer_source": _ref_text(g.tokenizer_source[1])
            if isinstance(g.tokenizer_source, tuple)
            else (g.tokenizer_source.name if isinstance(g.tokenizer_source, Sym) else None),
            "layer_granularity": g.layer_granularity,
            "normalize": g.normalize,
            "allow_negative_weights": g.allow_negative_weights,
            "smooth": g.smooth,
            "filters": list(g.filters),
            "dtype": g.dtype,
            "tasks": [[t.name, t.weight, t.metric] for t in self.tasks],
            "limit": self.limit,
            "num_fewshot": self.num_fewshot,
            "shuffle": self.shuffle,
            "random_init": self.random_init,
            "apply_chat_template": self.apply_chat_template,
            "fewshot_as_multiturn": self.fewshot_as_multiturn,
        }


def _ref_text(ref: Any) -> str:
    if isinstance(ref, Sym):
        return ref.name
    if isinstance(ref, PathRef):
        base = Path(ref.loc.file).parent if ref.loc and ref.loc.file not in ("<string>", "") else Path.cwd()
        return str((base / ref.path).resolve())
    if isinstance(ref, HfRef):
        return f"hf:{ref.repo}@{ref.revision or ''}"
    if isinstance(ref, AutoRef):
        from mergefile.syntax.model_paths import local_folder

        local = local_folder(ref) if "@" not in ref.text else None
        return str(local.path.resolve()) if local is not None else ref.text
    return repr(ref)


def validate(config: EvolveConfig, where: Loc | None = None) -> EvolveConfig:
    """mergekit-evolve's checks, as located errors."""
    g = config.genome
    if g.merge_method not in METHOD_PARAMS:
        raise unknown("evolve merge method", g.merge_method, METHOD_PARAMS, where)
    if not g.models:
        raise ConfigError("the genome needs at least one model", where)
    if g.merge_method in NEEDS_BASE and g.base_model is None:
        raise ConfigError(f"{g.merge_method} needs a base model (base_model: / base=...)", where)
    if g.merge_method == "slerp":
        if g.smooth:
            raise ConfigError("smooth is not supported for slerp", where)
        if g.filters:
            raise ConfigError("filters are not supported for slerp", where)
        if len(g.models) < 2:
            raise ConfigError("slerp needs at least two models in the genome", where)
    if g.layer_granularity < 0:
        raise ConfigError("layer_granularity must be >= 0 (0: one group for all layers)", where)
    if len(set(g.filters)) != len(g.filters) or any(not f for f in g.filters):
        raise ConfigError("filters must be distinct, non-empty tensor-name substrings", where)
    if not config.tasks:
        raise ConfigError("an evolve search needs at least one task", where)
    names = [name for name, _ in g.models]
    if len(set(names)) != len(names):
        raise ConfigError(f"a model is listed twice in the genome: {names}", where)
    return config


def check_benchmarks(config: EvolveConfig, allow: bool) -> list[str]:
    """Refuse (or, with ``allow``, warn about) optimizing directly on common benchmark tasks."""
    warnings = []
    for task in config.tasks:
        if task.name.endswith("_train") or not task.name.startswith(BENCHMARK_PREFIXES):
            continue
        text = f"task '{task.name}' is a common benchmark: optimizing a merge against its test set games the benchmark"
        if not allow:
            raise ConfigError(
                text,
                None,
                "use a task of your own (--task-search-path), or pass "
                "--i-understand-the-depths-of-the-evils-i-am-unleashing",
            )
        warnings.append(text)
    return warnings


# ---- mergekit-evolve YAML ------------------------------------------------------------------


def _model_name(text: str, taken: set[str]) -> str:
    """A Mergefile model name for a YAML reference: its last path part, made unique."""
    stem = text.split("+")[0].split("@")[0].rstrip("/").rsplit("/", 1)[-1] or "model"
    stem = _NAME.sub("_", stem).strip("._-") or "model"
    if not stem[0].isalpha() and stem[0] != "_":
        stem = "m_" + stem
    name, i = stem, 2
    while name in taken:
        name, i = f"{stem}_{i}", i + 1
    taken.add(name)
    return name


def _yaml_ref(value: Any, base_dir: str, loc: Loc, what: str) -> AutoRef:
    if isinstance(value, dict):  # mergekit's dict form {model: ..., lora: ...}
        value = value.get("model")
        if isinstance(value, dict):
            value = value.get("path")
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{what} must be a model path or hub id, got {value!r}", loc)
    text, _, lora = value.partition("+")
    if lora:
        return AutoRef(text, base_dir, loc, AutoRef(lora, base_dir, loc))
    return AutoRef(text, base_dir, loc)


def _check_keys(d: Any, allowed: tuple[str, ...], what: str, loc: Loc) -> dict:
    """Keys mergekit-evolve ignores (``model_name``) warn and are dropped; a likely typo of a
    key it uses stops with the near match (the rule of ``syntax/yaml_leniency.py``)."""
    from mergefile.syntax.yaml_leniency import likely_typo
    from mergefile.syntax.yaml_reader import warn_stderr

    if not isinstance(d, dict):
        raise ConfigError(f"{what} must be a mapping", loc)
    for k in list(d):
        if k in allowed:
            continue
        if likely_typo(str(k), allowed) is not None:
            raise unknown(f"key in {what}", str(k), allowed, loc)
        warn_stderr(f"{loc}: unknown key '{k}' in {what}, ignored as mergekit-evolve ignores it")
        d = {key: v for key, v in d.items() if key != k}
    return d


def _bool(v: Any, name: str, loc: Loc, allow_none: bool = False) -> bool | None:
    if v is None and allow_none:
        return None
    if not isinstance(v, bool):
        raise ConfigError(f"'{name}' must be true or false, got {v!r}", loc)
    return v


def _number(v: Any, name: str, loc: Loc, kind=(int, float)) -> Any:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, kind):
        raise ConfigError(f"'{name}' must be a number, got {v!r}", loc)
    return v


def load_genome_yaml(path: str | Path) -> EvolveConfig:
    """Read a mergekit-evolve configuration file.

    Args:
        path: the YAML file; relative model paths resolve beside it (as local folders) or
            else name hub models.

    Returns:
        The validated :class:`EvolveConfig`.

    Raises:
        ConfigError: unreadable file, unknown keys (with a "did you mean"), bad values.

    Example:
        >>> cfg = load_genome_yaml("genome.yml")  # doctest: +SKIP
    """
    import yaml

    path = Path(path)
    loc = Loc(str(path), 1, 1)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read genome file '{path}': {e.strerror or e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = Loc(str(path), mark.line + 1, mark.column + 1) if mark else loc
        raise ConfigError(f"genome file is not valid YAML: {getattr(e, 'problem', e)}", where) from None
    data = _check_keys(data, TOP_KEYS, "the evolve configuration", loc)
    for key in ("genome", "tasks"):
        if key not in data:
            raise ConfigError(f"the evolve configuration needs '{key}:'", loc)
    base_dir = os.getcwd()  # mergekit-evolve reads model paths from the working directory (syntax/model_paths.py)
    genome = _genome_from_yaml(_check_keys(data["genome"], GENOME_KEYS, "genome", loc), base_dir, loc)
    tasks = _tasks_from_yaml(data["tasks"], loc)
    decls = tuple(ModelDecl(name, ref, ref.loc) for name, ref in _decl_pairs(genome))
    act = data.get("apply_chat_template", True)
    if not isinstance(act, (bool, str)):
        raise ConfigError(f"'apply_chat_template' must be true, false or a template name, got {act!r}", loc)
    config = EvolveConfig(
        genome=genome,
        tasks=tasks,
        limit=_number(data.get("limit"), "limit", loc),
        num_fewshot=_number(data.get("num_fewshot"), "num_fewshot", loc, int),
        shuffle=bool(_bool(data.get("shuffle", False), "shuffle", loc)),
        random_init=bool(_bool(data.get("random_init", False), "random_init", loc)),
        apply_chat_template=act,
        fewshot_as_multiturn=bool(_bool(data.get("fewshot_as_multiturn", True), "fewshot_as_multiturn", loc)),
        path=str(path.resolve().parent / "Mergefile"),
        statements=decls,
    )
    return validate(config, loc)


def _decl_pairs(genome: GenomeDef) -> list[tuple[str, Ref]]:
    pairs = list(genome.models)
    if genome.base_model and genome.base_model[0] not in {n for n, _ in pairs}:
        pairs.append(genome.base_model)
    if isinstance(genome.tokenizer_source, tuple) and genome.tokenizer_source[0] not in {n for n, _ in pairs}:
        pairs.append(genome.tokenizer_source)
    return pairs


def _genome_from_yaml(g: dict, base_dir: str, loc: Loc) -> GenomeDef:
    for key in ("models", "merge_method"):
        if key not in g:
            raise ConfigError(f"the genome needs '{key}:'", loc)
    if not isinstance(g["models"], list):
        raise ConfigError("genome 'models' must be a list of model paths or hub ids", loc)
    taken: set[str] = set()
    by_text: dict[str, tuple[str, Ref]] = {}
    models = []
    for m in g["models"]:
        ref = _yaml_ref(m, base_dir, loc, "a genome model")
        pair = (_model_name(ref.text, taken), ref)
        by_text[ref.text] = pair
        models.append(pair)

    def named(value: Any, what: str) -> tuple[str, Ref]:
        ref = _yaml_ref(value, base_dir, loc, what)
        return by_text.get(ref.text) or (_model_name(ref.text, taken), ref)

    base = named(g["base_model"], "base_model") if g.get("base_model") is not None else None
    tok = g.get("tokenizer_source")
    if tok in ("base", "union"):
        tok = Sym(tok, loc)
    elif tok is not None:
        tok = named(tok, "tokenizer_source")
    filters = g.get("filters") or []
    if not isinstance(filters, list) or not all(isinstance(f, str) for f in filters):
        raise ConfigError("genome 'filters' must be a list of tensor-name substrings", loc)
    method = g["merge_method"]
    if not isinstance(method, str):
        raise ConfigError(f"'merge_method' must be a name, got {method!r}", loc)
    dtype = g.get("dtype", "bfloat16")
    if dtype is not None and not isinstance(dtype, str):
        raise ConfigError(f"genome 'dtype' must be a dtype name or null, got {dtype!r}", loc)
    return GenomeDef(
        models=tuple(models),
        merge_method=method,
        base_model=base,
        tokenizer_source=tok,
        layer_granularity=int(_number(g.get("layer_granularity", 0) or 0, "layer_granularity", loc, int)),
        normalize=_bool(g.get("normalize"), "normalize", loc, allow_none=True),
        allow_negative_weights=bool(_bool(g.get("allow_negative_weights", False), "allow_negative_weights", loc)),
        smooth=bool(_bool(g.get("smooth", False), "smooth", loc)),
        filters=tuple(filters),
        dtype=dtype,
    )


def _tasks_from_yaml(tasks: Any, loc: Loc) -> tuple[TaskSpec, ...]:
    if not isinstance(tasks, list) or not tasks:
        raise ConfigError("'tasks' must be a non-empty list of lm-eval task names", loc)
    out = []
    for t in tasks:
        if isinstance(t, str):
            out.append(TaskSpec(t))
            continue
        t = _check_keys(t, TASK_KEYS, "a task", loc)
        if not isinstance(t.get("name"), str):
            raise ConfigError(f"a task needs 'name:' (an lm-eval task), got {t!r}", loc)
        weight = _number(t.get("weight", 1.0), "weight", loc)
        metric = t.get("metric", "acc,none")
        if not isinstance(metric, str):
            raise ConfigError(f'task metric must be a string like "acc,none", got {metric!r}', loc)
        out.append(TaskSpec(t["name"], float(1.0 if weight is None else weight), metric))
    return tuple(out)


def genome_yaml_text(config: EvolveConfig) -> str:
    """The mergekit-evolve YAML of a configuration (models written as resolved paths or hub ids)."""
    import yaml

    g = config.genome
    genome: dict[str, Any] = {"models": [_ref_text(r) for _, r in g.models], "merge_method": g.merge_method}
    if g.base_model:
        genome["base_model"] = _ref_text(g.base_model[1])
    if g.tokenizer_source is not None:
        genome["tokenizer_source"] = (
            g.tokenizer_source.name if isinstance(g.tokenizer_source, Sym) else _ref_text(g.tokenizer_source[1])
        )
    genome.update(
        layer_granularity=g.layer_granularity,
        normalize=g.normalize,
        allow_negative_weights=g.allow_negative_weights,
        smooth=g.smooth,
    )
    if g.filters:
        genome["filters"] = list(g.filters)
    if g.dtype != "bfloat16":
        genome["dtype"] = g.dtype
    data = {
        "genome": genome,
        "tasks": [{"name": t.name, "weight": t.weight, "metric": t.metric} for t in config.tasks],
        "limit": config.limit,
        "num_fewshot": config.num_fewshot,
        "shuffle": config.shuffle,
        "random_init": config.random_init,
        "apply_chat_template": config.apply_chat_template,
        "fewshot_as_multiturn": config.fewshot_as_multiturn,
    }
    return yaml.safe_dump(data, sort_keys=False)
