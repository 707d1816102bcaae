"""Scoring candidates with lm-eval: tasks loaded once per process, then models scored one by one.

lm-eval, transformers and vLLM are imported inside functions: importing this module is free.

* Tasks come from lm-eval's registry plus the ``--task-search-path`` folders. When every task is
  found in those folders the built-in registry is not indexed at all (indexing its ~15,000
  YAML files takes about 20 s). A relative ``data_files`` path in a task YAML found there is
  resolved against the YAML's own folder (lm-eval alone resolves it against the working
  directory, which differs between the driver and Ray workers).
* Scoring runs the harness's ``evaluator.evaluate`` on the tasks built once, with the overrides
  ``simple_evaluate`` applies (few-shot count and seed, limit, chat template, seeded RNGs) but
  without its per-call overheads (re-indexing and re-reading tasks, the git hash, and the
  environment report, which alone takes seconds): the same numbers, a fraction of the time.
* The ``hf`` backend scores a candidate folder (``score_folder``) or a model kept in memory
  (``Resident``); ``vllm`` scores a folder and is imported only when asked for.
* A chat template is applied only when the tokenizer has one (``apply_chat_template: true``,
  mergekit's default), or when a template is named; ``false`` never applies one.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergefile.errors import ConfigError, UserError
from mergefile.targets.evolve.config import TaskSpec

__all__ = ["Resident", "ScoreSpec", "Scorer", "combine", "task_files_digest"]

FEWSHOT_SEED = 1234  # lm-eval's default fewshot_random_seed


@dataclass(frozen=True)
class ScoreSpec:
    """How every candidate is evaluated (one frozen object, shipped to each worker)."""

    tasks: tuple[TaskSpec, ...]
    limit: int | float | None = None
    num_fewshot: int | None = None
    shuffle: bool = False
    seed: int = 0
    apply_chat_template: bool | str = True
    fewshot_as_multiturn: bool = True
    task_paths: tuple[str, ...] = ()
    batch_size: int | str | None = None
    device: str = "cpu"
    vllm: bool = False
    trust_remote_code: bool = False
    quantization: str | None = None  # "8bit" | "4bit": the evaluated model loaded with bitsandbytes

    @property
    def task_names(self) -> list[str]:
        return sorted({t.name for t in self.tasks})

    @property
    def hf_batch_size(self) -> int | str:
        if self.batch_size is not None:
            return self.batch_size
        return "auto" if self.vllm else 8

    def key_payload(self) -> dict[str, Any]:
        """What, besides the candidate, decides the metrics (task weights do not: they are
        applied to cached metrics, so re-weighting reuses every evaluation)."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            harness = version("lm_eval")
        except PackageNotFoundError:  # pragma: no cover - the evolve extra is missing
            harness = None
        payload = {
            "tasks": self.task_names,
            "task_files": task_files_digest(self.task_paths),
            "limit": self.limit,
            "num_fewshot": self.num_fewshot,
            "shuffle_seed": self.seed if self.shuffle else None,
            "apply_chat_template": self.apply_chat_template,
            "fewshot_as_multiturn": self.fewshot_as_multiturn,
            "backend": "vllm" if self.vllm else "hf",
            "batch_size": self.hf_batch_size,
            "lm_eval": harness,
        }
        if self.quantization is not None:  # only when set: unquantized score keys stay as they were
            payload["quantization"] = self.quantization
        return payload


def task_files_digest(paths) -> str:
    """Digest of the task folders' files (YAML, data, helpers): editing a task re-scores."""
    import xxhash

    h = xxhash.xxh3_128()
    for root in sorted(str(Path(p).resolve()) for p in paths):
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__pycache__")))
            for name in sorted(filenames):
                path = Path(dirpath) / name
                size = path.stat().st_size
                h.update(f"{path.relative_to(root)}\0{size}\0".encode())
                if size <= 64 * 2**20:
                    h.update(path.read_bytes())
    return h.hexdigest()


def combine(tasks: tuple[TaskSpec, ...], results: dict[str, dict[str, float]]) -> float:
    """The objective: sum of ``weight * metric`` over the tasks (higher is better)."""
    score = 0.0
    for t in tasks:
        metrics = results.get(t.name)
        if metrics is None:
            raise UserError(f"lm-eval returned no results for task '{t.name}'")
        if t.metric not in metrics:
            known = ", ".join(sorted(k for k in metrics if isinstance(metrics[k], (int, float))))
            raise ConfigError(f"task '{t.name}' has no metric '{t.metric}'", None, f"it reports: {known}")
        score += t.weight * float(metrics[t.metric])
    return score


def _quiet() -> None:
    """No progress bars from the harness and transformers in worker output."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass
    import logging

    for name in ("lm-eval", "lm_eval", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _import_lm_eval():
    try:
        import lm_eval  # noqa: F401
        from lm_eval import evaluator
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError("evolve needs lm-eval: pip install 'mergebuild[evolve]'") from None
    return evaluator, TaskManager


class Scorer:
    """Scores models on the spec's tasks. One per process: tasks are built on first use."""

    def __init__(self, spec: ScoreSpec):
        self.spec = spec
        self._loaded: dict | None = None
        self.calls = 0  # lm-eval evaluations run by this scorer
        _quiet()

    # -- tasks ------------------------------------------------------------------------------
    def tasks(self) -> dict:
        if self._loaded is None:
            self._loaded = self._load_tasks()
        return self._loaded

    def _load_tasks(self) -> dict:
        _, TaskManager = _import_lm_eval()
        paths = [str(Path(p).resolve()) for p in self.spec.task_paths]
        names = self.spec.task_names
        tm = TaskManager(include_path=paths, include_defaults=False) if paths else None
        if tm is None or any(n not in tm.all_tasks for n in names):
            tm = TaskManager(include_path=paths or None)
        missing = [n for n in names if n not in tm.all_tasks]
        if missing:
            from mergefile.errors import did_you_mean

            hint = did_you_mean(missing[0], tm.all_tasks) or "add its folder with --task-search-path"
            raise ConfigError(f"unknown lm-eval task '{missing[0]}'", None, hint)
        loaded = tm.load([_task_spec(tm, n, paths) for n in names])
        for task in loaded["tasks"].values():
            if self.spec.num_fewshot is not None and task.get_config("num_fewshot") != 0:
                task.set_config(key="num_fewshot", value=self.spec.num_fewshot)
            elif task.get_config("num_fewshot") is None:
                task.set_config(key="num_fewshot", value=0)
            task.set_fewshot_seed(seed=FEWSHOT_SEED)
        return loaded

    def _samples(self, loaded: dict) -> dict[str, list[int]] | None:
        """With ``shuffle``: the same seeded random subset of ``limit`` documents per task."""
        if not self.spec.shuffle:
            return None
        import numpy as np

        out = {}
        for name, task in loaded["tasks"].items():
            n = len(task.eval_docs)
            limit = self.spec.limit
            k = n if limit is None else (int(limit * n) if limit < 1 else min(n, int(limit)))
            rng = np.random.default_rng(self.spec.seed)
            out[name] = sorted(int(i) for i in rng.permutation(n)[:k])
        return out

    # -- scoring ----------------------------------------------------------------------------
    def chat_template(self, tokenizer) -> bool | str:
        act = self.spec.apply_chat_template
        if isinstance(act, str):
            return act
        return bool(act) and bool(getattr(tokenizer, "chat_template", None))

    def score_lm(self, lm) -> dict[str, dict[str, float]]:
        """Evaluate an lm-eval ``LM``; returns ``{task: {metric: value}}`` (numbers only)."""
        import numpy as np

        from mergefile._lazy import torch

        evaluator, _ = _import_lm_eval()
        loaded = self.tasks()
        act = self.chat_template(getattr(lm, "tokenizer", None))
        samples = self._samples(loaded)
        random.seed(0)  # as simple_evaluate seeds them, so results never depend on history
        np.random.seed(FEWSHOT_SEED)
        torch.manual_seed(FEWSHOT_SEED)
        res = evaluator.evaluate(
            lm=lm,
            task_dict=loaded,
            limit=None if samples else self.spec.limit,
            samples=samples,
            bootstrap_iters=0,
            log_samples=False,
            apply_chat_template=act,
            fewshot_as_multiturn=bool(act) and self.spec.fewshot_as_multiturn,
            verbosity="ERROR",
        )
        self.calls += 1
        out = {}
        for task, metrics in res["results"].items():
            out[task] = {
                k: float(v)
                for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
            }
        return out

    def score_folder(self, folder: str | Path) -> dict[str, dict[str, float]]:
        """Load the model folder with the chosen backend and evaluate it."""
        lm = self.folder_lm(folder)
        try:
            return self.score_lm(lm)
        finally:
            del lm
            _free_device_memory(self.spec.device)

    def folder_lm(self, folder: str | Path):
        spec = self.spec
        if spec.quantization is not None:
            return self._quantized_lm(folder)
        if spec.vllm:
            try:
                from lm_eval.models.vllm_causallms import VLLM
            except ImportError:
                raise UserError("--vllm needs vLLM: pip install 'mergebuild[vllm]'") from None
            return VLLM(
                pretrained=str(folder),
                batch_size=spec.hf_batch_size,
                device=spec.device,
                trust_remote_code=spec.trust_remote_code,
                gpu_memory_utilization=0.8,
            )
        from lm_eval.models.huggingface import HFLM

        return HFLM(
            pretrained=str(folder),
            device=spec.device,
            batch_size=spec.hf_batch_size,
            dtype="auto",
            trust_remote_code=spec.trust_remote_code,
        )

    def _quantized_lm(self, folder: str | Path):
        """The folder's model loaded with bitsandbytes, wrapped in ``HFLM`` (which cannot take a
        quantization config itself: it reads one only from the model's config.json)."""
        from lm_eval.models.huggingface import HFLM
        from transformers import AutoModelForCausalLM, AutoTokenizer

        spec = self.spec
        model = load_quantized(AutoModelForCausalLM, folder, "auto", spec)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=spec.trust_remote_code)
        return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=spec.hf_batch_size)


def load_quantized(auto_class, folder: str | Path, dtype, spec: ScoreSpec):
    """``from_pretrained`` with the spec's ``BitsAndBytesConfig``, placed whole on its GPU."""
    from mergefile.targets.evolve.quantize import bnb_config

    index = spec.device.partition(":")[2] or "0"
    model = auto_class.from_pretrained(
        str(folder),
        dtype=dtype,
        quantization_config=bnb_config(spec.quantization),
        device_map={"": f"cuda:{index}"},
        trust_remote_code=spec.trust_remote_code,
    )
    return model.eval().requires_grad_(False)


def _free_device_memory(device: str) -> None:
    """Give a scored model's GPU memory back before the next candidate loads."""
    if not device.startswith("cuda"):
        return
    import gc

    from mergefile._lazy import torch

    gc.collect()
    torch.cuda.empty_cache()


def _task_spec(tm, name: str, paths: list[str]) -> str | dict:
    """A task name, or (for a YAML task under a search path whose ``data_files`` are relative
    paths that exist beside it) its full config with those paths made absolute."""
    try:
        entry = tm.task_index.get(name)
        yaml_path = getattr(entry, "yaml_path", None)
        if yaml_path is None or getattr(getattr(entry, "kind", None), "name", "") != "TASK":
            return name
        yaml_path = Path(yaml_path).resolve()
        if not any(str(yaml_path).startswith(p.rstrip("/") + "/") for p in paths):
            return name
        cfg = _load_task_yaml(yaml_path)
    except Exception:  # lm-eval internals vary between versions: fall back to the name
        return name
    kwargs = cfg.get("dataset_kwargs") or {}
    files = kwargs.get("data_files")
    if files is None:
        return name

    def fix(p):
        if isinstance(p, str) and not os.path.isabs(p) and (yaml_path.parent / p).exists():
            return str(yaml_path.parent / p)
        return p

    if isinstance(files, dict):
        fixed = {k: ([fix(x) for x in v] if isinstance(v, list) else fix(v)) for k, v in files.items()}
    elif isinstance(files, list):
        fixed = [fix(x) for x in files]
    else:
        fixed = fix(files)
    if fixed == files:
        return name
    cfg = dict(cfg)
    cfg["dataset_kwargs"] = {**kwargs, "data_files": fixed}
    return cfg


def _load_task_yaml(path: Path) -> dict:
    try:
        from lm_eval.tasks._yaml_loader import load_yaml

        return load_yaml(path, resolve_func=True)
    except ImportError:  # older lm-eval
        from lm_eval.utils import load_yaml_config

        return load_yaml_config(str(path), mode="full")


class Resident:
    """One HF model kept in memory; each candidate's tensors overwrite its parameters in place.

    Built once from a template folder (the candidate's tokenizer donor: same architecture),
    then wrapped once in lm-eval's ``HFLM``: no model reload, no output folder per candidate.
    With a quantization the model is loaded quantized, and the weights of its bitsandbytes
    layers are quantized from each candidate's tensors as loading would quantize them.
    """

    def __init__(self, scorer: Scorer, template: str | Path, dtype, device: str):
        from lm_eval.models.huggingface import HFLM
        from transformers import AutoModelForCausalLM, AutoTokenizer

        spec = scorer.spec
        if spec.vllm:
            raise UserError("--in-memory scoring uses the hf backend; it does not go with --vllm")
        self.scorer = scorer
        self._quantized: dict[str, Any] = {}  # weight name -> bitsandbytes layer
        if spec.quantization is not None:
            from mergefile.targets.evolve.quantize import quantized_linears

            self.model = load_quantized(AutoModelForCausalLM, template, dtype, spec)
            self._quantized = quantized_linears(self.model)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                str(template), dtype=dtype, trust_remote_code=spec.trust_remote_code
            )
            self.model = model.to(device).eval().requires_grad_(False)
        tokenizer = AutoTokenizer.from_pretrained(str(template), trust_remote_code=spec.trust_remote_code)
        self.lm = HFLM(pretrained=self.model, tokenizer=tokenizer, batch_size=spec.hf_batch_size)
        self._params = dict(self.model.named_parameters(remove_duplicate=False))
        self._params.update(dict(self.model.named_buffers(remove_duplicate=False)))
        # tied parameters appear under several names: each name -> the first name of its tensor
        first: dict[int, str] = {}
        self._canonical = {n: first.setdefault(id(p), n) for n, p in self._params.items()}
        self._required = {self._canonical[name] for name, _ in self.model.named_parameters()}

    def load(self, tensors) -> int:
        """Copy ``(name, tensor)`` pairs into the model; every parameter must be covered."""
        from mergefile._lazy import torch

        seen: set[str] = set()
        with torch.no_grad():
            for name, t in tensors:
                layer = self._quantized.get(name)
                if layer is not None:
                    self._requantize(name, layer, t)
                else:
                    p = self._params.get(name)
                    if p is None:
                        raise UserError(
                            f"--in-memory: the merged tensor '{name}' has no parameter in the resident model"
                        )
                    _check_shape(name, tuple(t.shape), tuple(p.shape))
                    p.copy_(t)
                seen.add(self._canonical.get(name, name))
        missing = sorted(self._required - seen)
        if missing:
            raise UserError(f"--in-memory: the candidate has no tensor for parameter '{missing[0]}'")
        return len(seen)

    def _requantize(self, name: str, layer, t) -> None:
        from mergefile.targets.evolve.quantize import requantize, weight_shape

        _check_shape(name, tuple(t.shape), weight_shape(layer))
        requantize(layer, t)

    def score(self) -> dict[str, dict[str, float]]:
        return self.scorer.score_lm(self.lm)


def _check_shape(name: str, got: tuple[int, ...], expected: tuple[int, ...]) -> None:
    if got != expected:
        raise UserError(f"--in-memory: '{name}' has shape {got}, the model expects {expected}")
