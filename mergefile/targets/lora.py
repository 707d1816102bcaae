"""``lora(finetuned=..., base=..., rank=...)``: a PEFT adapter extracted from a fine-tune (reference §8).

Planning enumerates modules from tensor names (no model is instantiated): a module is a tensor
name minus its last part. 2-D ``weight`` modules (with an optional ``bias``) are decomposed; the
input embedding and the output head go to ``modules_to_save`` at full rank unless
``embed_lora=true``; anything else (norms, fused parameters) is saved at full rank too unless
``skip_undecomposable=true``. Bias deltas are ``lora_B.bias`` (peft's ``lora_bias``) when every
LoRA module has a bias; otherwise the fine-tuned biases are saved whole (``bias="lora_only"``). A model with tied embeddings has no ``lm_head`` tensor: its head is
read as the embedding (never a KeyError); the embedding is saved in full (even with
``embed_lora``: peft would merge a LoRA on tied embeddings twice), the head beside it, and
``ensure_weight_tying`` keeps peft's head tied to it. An adapter with no LoRA module is an error,
never an empty folder.

Every output tensor is a keyed job of the hidden method ``lora:extract`` (``adapter.py``).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, replace

from mergefile.errors import ConfigError
from mergefile.io.header import code_name, dtype_code
from mergefile.methods.base import ParamSpec
from mergefile.plan.inputs import InputModel
from mergefile.plan.jobs import InputRef, TargetPlan, TensorJob, freeze
from mergefile.plan.kinds import register_kind
from mergefile.syntax.ast import Target
from mergefile.targets._params import KindParams
from mergefile.targets.adapter import ADAPTER_WEIGHTS, METHOD, PREFIX, AdapterLayout, card

__all__ = ["KIND", "METHOD", "SPECS"]

DEFAULT_RANK = 128  # mergekit-extract-lora's --max-rank
SPECS = (
    ParamSpec("finetuned", type=object, doc="the fine-tuned model"),
    ParamSpec("rank", None, type=int, doc="rank of every module (also rank[filter] = N per module)"),
    ParamSpec("max_rank", DEFAULT_RANK, type=int, doc="mergekit's name for rank"),
    ParamSpec("sv_epsilon", 0.0, doc="drop singular values at or below this"),
    ParamSpec("distribute_scale", True, type=bool, doc="split the singular values between A and B"),
    ParamSpec("embed_lora", False, type=bool, doc="decompose embeddings and lm_head too"),
    ParamSpec("save_modules", (), type=tuple, doc="modules saved at full rank (modules_to_save)"),
    # mergekit's --exclude-regex / --include-regex ("include" alone is a Mergefile keyword)
    ParamSpec("exclude_regex", (), type=tuple, doc="regexes of modules to leave out"),
    ParamSpec("include_regex", (), type=tuple, doc="regexes: only matching modules are considered"),
    ParamSpec("skip_undecomposable", False, type=bool, doc="leave out modules that cannot be decomposed"),
)
GROUP = ("adapter",)
_BUFFERS = ("inv_freq", "masked_bias")
_FLOATS = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")


@dataclass
class _Module:
    name: str
    params: dict[str, str] = field(default_factory=dict)  # "weight"/"bias"/... -> fine-tune tensor
    role: str = "linear"  # linear | embedding | head | other

    @property
    def leaf(self) -> str:
        return self.name.rsplit(".", 1)[-1]


class LoraKind:
    """The ``lora`` target kind."""

    name = "lora"
    method = METHOD

    def plan(self, planner, t: Target) -> TargetPlan:
        if t.sources or t.slices:
            raise ConfigError("lora() takes no model lines: use lora(finetuned=..., base=...)", t.loc)
        kp = KindParams(planner, t, SPECS, filtered=("rank",))
        ft_p, base_p = kp.param("finetuned"), planner.setting(t, "base")
        if ft_p is None or base_p is None:
            raise ConfigError("lora() needs finetuned=MODEL and base=MODEL", t.method_loc or t.loc)
        ft, base = planner.model_setting(ft_p), planner.model_setting(base_p)
        if ft is base:
            raise ConfigError("lora(): finetuned and base are the same model", ft_p.loc)
        out_dtype = planner.dtype_setting(t, "out_dtype") or planner.dtype_setting(t, "dtype")
        builder = _Builder(t, kp, ft, base, out_dtype)
        jobs, lora_mods, saved, warnings = builder.jobs()
        static = builder.static_config(lora_mods, saved)
        rank = kp.get("rank")
        options = {
            "rank": kp.get("max_rank") if rank is None else rank,
            "per-module ranks": len(kp.filters("rank")),
            **{k: kp.get(k) for k in ("sv_epsilon", "distribute_scale", "embed_lora")},
        }
        layout = AdapterLayout(
            static,
            tuple((m.name, m.role == "embedding") for m in lora_mods),
            card(t.name, ft.label, base.label, options, t.origin, base.hub[0] if base.hub else None),
        )
        plan = TargetPlan(
            name=t.name,
            out_dir=planner.base_dir / t.name,
            target=t,
            method=METHOD,
            inputs=[ft, base],
            jobs=jobs,
            config=static,
            donor=ft,
            num_layers=0,
            layer_key=None,
            warnings=warnings,
        )
        plan.shard_names = {GROUP: ADAPTER_WEIGHTS}
        plan.layout = layout
        return plan


class _Builder:
    """The modules of one lora target and their jobs."""

    def __init__(self, t: Target, kp: KindParams, ft: InputModel, base: InputModel, out_dtype: str | None):
        self.t, self.kp, self.ft, self.base, self.out_dtype = t, kp, ft, base, out_dtype
        self.ft_lay, self.base_lay = ft.get_layout(), base.get_layout()
        self.include = _regexes(kp, "include_regex")
        self.exclude = _regexes(kp, "exclude_regex")
        self.save = kp.get("save_modules")
        self.embed_lora = kp.get("embed_lora")
        self.skip = kp.get("skip_undecomposable")
        # Both models tie the head to the embedding (no head tensor in either file).
        self.tied = (
            self.base_lay.embedding is not None
            and not any(self.base_lay.is_head(n) for n in base.tensors)
            and not any(self.ft_lay.is_head(n) for n in ft.tensors)
        )

    # -- tensors ---------------------------------------------------------------------
    def _tensor(self, model: InputModel, layout, name: str) -> str | None:
        """``name`` in ``model``, or the embedding a missing (tied) head reads."""
        if name in model.tensors:
            return name
        return layout.tied_source(name)

    @functools.cached_property
    def modules(self) -> list[_Module]:
        """Every module of the fine-tune (and a head only the base has), in model order."""
        names = set(self.ft.tensors)
        names |= {n for n in self.base.tensors if self.base_lay.is_head(n)}  # head the fine-tune ties
        mods: dict[str, _Module] = {}
        for n in sorted(names):
            mod, _, part = n.rpartition(".")
            if not mod or part in _BUFFERS or self.ft.tensors.get(n, self.base.tensors.get(n)).dtype not in _FLOATS:
                continue  # saved buffers (rotary inv_freq, masks) and integer tensors are no parameters
            mods.setdefault(mod, _Module(mod)).params[part] = n
        for m in mods.values():
            w = m.params.get("weight")
            if w is not None and w == self.ft_lay.embedding:
                m.role = "embedding"
            elif w is not None and self.ft_lay.is_head(w):
                m.role = "head"
            elif w is None or set(m.params) - {"weight", "bias"} or len(self._shape(self.ft, self.ft_lay, w)) != 2:
                m.role = "other"
        return [mods[k] for k in sorted(mods, key=_order)]

    def _shape(self, model: InputModel, layout, name: str) -> tuple[int, ...]:
        src = self._tensor(model, layout, name)
        return tuple(model.tensors[src].shape) if src else ()

    # -- decisions -------------------------------------------------------------------
    def _wanted(self, m: _Module) -> bool:
        if self.include and not any(r.search(m.name) for r in self.include):
            return False
        return not any(r.search(m.name) for r in self.exclude)

    def _saved(self, m: _Module) -> bool:
        return any(m.name == s or m.name.endswith("." + s) for s in self.save)

    def jobs(self) -> tuple[list[TensorJob], list[_Module], list[_Module], list[str]]:
        lora_mods: list[_Module] = []
        saved: list[_Module] = []
        warnings: list[str] = []
        for m in self.modules:
            if not self._wanted(m):
                continue
            decompose = m.role == "linear" or (m.role in ("embedding", "head") and self.embed_lora)
            if decompose and m.role == "embedding" and self.tied:
                warnings.append(
                    f"{m.name}: tied to the head, saved at full rank (peft merges a LoRA on tied embeddings twice)"
                )
                decompose = False
            if decompose and not self._saved(m):
                why = self._mismatch(m)
                if why is None:
                    lora_mods.append(m)
                    continue
                warnings.append(f"{m.name}: {why}; saved at full rank instead")
            elif not self._saved(m) and self.skip:
                continue
            saved.append(m)
        if not lora_mods:
            raise ConfigError(
                f"lora target '{self.t.name}' would hold no LoRA module (every module is excluded,"
                " saved at full rank or skipped)",
                self.t.loc,
            )
        # peft's lora_bias (bias deltas as lora_B.bias) is one switch for every LoRA module and cannot
        # merge into a layer without a bias: with biases on only some modules, their fine-tuned
        # biases are saved whole instead (bias="lora_only").
        self.bias_deltas = all("bias" in m.params for m in lora_mods)
        jobs = [j for m in lora_mods for j in self._lora_jobs(m)] + [j for m in saved for j in self._save_jobs(m)]
        embed = [m for m in saved if m.role == "embedding"]
        if self.tied and embed:
            jobs += self._tied_head_jobs(embed[0], jobs, warnings)
        return jobs, lora_mods, saved, warnings

    def _tied_head_jobs(self, embed: _Module, jobs: list[TensorJob], warnings: list[str]) -> list[TensorJob]:
        """The head of a tied model as peft's ``ensure_weight_tying`` saves it: the saved embedding
        again. Without it peft reports missing head keys (mergekit #521) and, unmerged, the head
        keeps the base's embedding."""
        heads = [h for h in self.base_lay.head_names if h.endswith(".weight")]
        if not heads:
            warnings.append("tied embeddings but no known head name: the head keeps the base's embedding")
            return []
        src = next(j for j in jobs if j.name == PREFIX + embed.name + ".weight")
        return [replace(src, name=PREFIX + heads[0])]

    def _mismatch(self, m: _Module) -> str | None:
        for part in m.params:
            a = self._shape(self.ft, self.ft_lay, m.params[part])
            b = self._shape(self.base, self.base_lay, m.params[part])
            if not b:
                return f"'{m.params[part]}' is missing from the base model"
            if a != b:
                return f"shapes differ ({list(a)} in {self.ft.label}, {list(b)} in {self.base.label})"
        return None

    def _rank(self, m: _Module) -> int:
        rank = self.kp.get("rank", m.name)
        rank = self.kp.get("max_rank") if rank is None else rank
        if rank < 1:
            raise ConfigError(f"rank must be at least 1, got {rank} for module '{m.name}'", self.kp.loc("rank"))
        return rank

    # -- jobs ------------------------------------------------------------------------
    def _job(
        self, name: str, inputs: tuple[InputRef, ...], params: dict, shape: tuple[int, ...], src: str
    ) -> TensorJob:
        code = dtype_code(self.out_dtype) if self.out_dtype else self.ft.tensors[src].dtype
        return TensorJob(
            name=name,
            group=GROUP,
            method=METHOD.name,
            inputs=inputs,
            base_index=1 if len(inputs) == 2 else None,
            params=freeze(params),
            per_model=((),) * len(inputs),
            dtype=None,
            out_dtype=code_name(code),
            is_embed=False,
            seed=0,
            result_dtype=code,
            result_shape=shape,
        )

    def _lora_jobs(self, m: _Module) -> list[TensorJob]:
        w = m.params["weight"]
        ft_w, base_w = self._tensor(self.ft, self.ft_lay, w), self._tensor(self.base, self.base_lay, w)
        out, inp = self._shape(self.base, self.base_lay, w)
        embed = m.role == "embedding"
        if embed:
            out, inp = inp, out
        rank = min(self._rank(m), out, inp)
        stage = {
            "rank": rank,
            "sv_epsilon": float(self.kp.get("sv_epsilon")),
            "distribute_scale": self.kp.get("distribute_scale"),
            "transpose": embed,
        }
        refs = (InputRef(0, ft_w), InputRef(1, base_w))
        a, b = (".lora_embedding_A", ".lora_embedding_B") if embed else (".lora_A.weight", ".lora_B.weight")
        jobs = [
            self._job(PREFIX + m.name + a, refs, {**stage, "part": "A"}, (rank, inp), ft_w),
            self._job(PREFIX + m.name + b, refs, {**stage, "part": "B"}, (out, rank), ft_w),
        ]
        bias = m.params.get("bias")
        if bias is not None and self.bias_deltas:
            fixed = {"rank": 0, "sv_epsilon": 0.0, "distribute_scale": True, "transpose": False, "part": "bias"}
            jobs.append(
                self._job(
                    PREFIX + m.name + ".lora_B.bias",
                    (InputRef(0, bias), InputRef(1, bias)),
                    fixed,
                    tuple(self.ft.tensors[bias].shape),
                    bias,
                )
            )
        elif bias is not None:
            jobs.append(
                self._job(
                    PREFIX + m.name + ".base_layer.bias",
                    (InputRef(0, bias),),
                    {"part": "full"},
                    tuple(self.ft.tensors[bias].shape),
                    bias,
                )
            )
        return jobs

    def _save_jobs(self, m: _Module) -> list[TensorJob]:
        jobs = []
        for part, name in sorted(m.params.items()):
            src = self._tensor(self.ft, self.ft_lay, name)
            if src is None:
                continue
            shape = tuple(self.ft.tensors[src].shape)
            jobs.append(self._job(f"{PREFIX}{m.name}.{part}", (InputRef(0, src),), {"part": "full"}, shape, src))
        return jobs

    # -- adapter_config.json ---------------------------------------------------------
    def static_config(self, lora_mods: list[_Module], saved: list[_Module]) -> dict:
        everything = [m.name for m in self.modules]
        has_bias = any("bias" in m.params for m in lora_mods)
        deltas = has_bias and self.bias_deltas
        # peft ties the head to the saved embedding only when asked to
        tied_saved = self.tied and any(m.role == "embedding" for m in saved)
        base_name = self.base.hub[0] if self.base.hub else self.base.path
        return {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_name,
            "revision": None,
            "target_modules": _peft_names([m.name for m in lora_mods], everything, dot=True),
            "modules_to_save": _peft_names([m.name for m in saved], everything, dot=False) or None,
            "bias": "lora_only" if has_bias and not deltas else "none",
            "lora_bias": deltas,
            "lora_dropout": 0.0,
            "fan_in_fan_out": False,
            "inference_mode": True,
            "init_lora_weights": True,
            "use_rslora": False,
            "use_dora": False,
            "layers_to_transform": None,
            "layers_pattern": None,
            "ensure_weight_tying": tied_saved,
        }


def _peft_names(chosen: list[str], everything: list[str], dot: bool) -> list[str]:
    """Leaf names (``q_proj``) when they select exactly ``chosen``, else full module names.

    peft selects a module whose name ends with ``.NAME`` (target_modules, ``dot``) or just with
    ``NAME`` (modules_to_save: ``norm`` also selects ``input_layernorm``). A leaf name that also
    selected a module left out would give peft a module without weights (the "missing adapter
    keys" of mergekit #521), so then full names are written.
    """
    want = set(chosen)
    leaves = {m.rsplit(".", 1)[-1] for m in chosen}
    covered = {m for m in everything if any(m == x or m.endswith("." + x if dot else x) for x in leaves)}
    return sorted(leaves) if covered == want else sorted(want)


def _regexes(kp: KindParams, name: str) -> list[re.Pattern[str]]:
    out = []
    for text in kp.get(name):
        try:
            out.append(re.compile(text))
        except re.error as e:
            raise ConfigError(f"bad regex {text!r} in {name}: {e}", kp.loc(name)) from None
    return out


def _order(name: str) -> tuple:
    """Modules in model order: layer by layer (numbers compare as numbers)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split("."))


KIND = register_kind(LoraKind())
