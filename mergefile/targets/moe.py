"""``moe(base=...) { expert lines }``: dense experts assembled into a Mixture of Experts (reference §7).

Syntax (no grammar of its own: an expert is a source line, its prompts are parameters)::

    out/moe: moe(base=base, gate_mode=hidden, experts_per_token=2) {
        math  prompts=["solve", "prove"] negative=["hello"]
        code  prompts=["def", "class"] noise_scale=0.01
        chat  prompts=["hi"] shared=true          # Qwen2-MoE's shared expert
    }

The base gives attention, norms, embeddings and the head; each routed expert gives its MLP. Every
output tensor is a keyed job of the hidden method ``moe:assemble``: copies of base tensors, per
layer the fused expert tensors (inputs: the experts' MLP tensors) and the router (inputs: the
experts' gate vectors, derived tensors of ``gates.py`` keyed by (model, prompts)). So editing one
expert's prompts recomputes its gate vectors and the routers; expert weights are cache hits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mergefile._lazy import torch
from mergefile.errors import ConfigError
from mergefile.io.header import code_name, dtype_code
from mergefile.methods.base import (
    BaseRule,
    EmbedPolicy,
    MergeContext,
    Method,
    ParamSpec,
)
from mergefile.plan.inputs import InputModel, TensorMeta
from mergefile.plan.jobs import InputRef, TargetPlan, TensorJob, freeze
from mergefile.plan.kinds import register_kind
from mergefile.plan.params import substitute
from mergefile.syntax.ast import Target
from mergefile.targets._params import KindParams, source_value
from mergefile.targets.gates import GATE_MODES, RANDOM_MODES, ExpertPrompts, GateVectors
from mergefile.targets.moe_arch import mlp_names, moe_names, pick_arch
from mergefile.targets.moe_layout import MoeLayout

__all__ = ["KIND", "METHOD", "SOURCE_SPECS", "SPECS"]

SPECS = (
    ParamSpec("gate_mode", "hidden", type=str, doc=" | ".join(GATE_MODES)),
    ParamSpec("experts_per_token", 2, type=int),
    ParamSpec("architecture", "auto", type=str, doc="mixtral | qwen2_moe | qwen3_moe (prefix), auto"),
    ParamSpec(
        "allow_identical_experts", False, type=bool, doc="mergekit's --i-understand-this-is-not-useful-without-training"
    ),
)
SOURCE_SPECS = {
    "prompts": ParamSpec("prompts", (), type=tuple),
    "negative": ParamSpec("negative", (), type=tuple),
    "noise_scale": ParamSpec("noise_scale", 0.0),
    "residual_scale": ParamSpec("residual_scale", 1.0),
    "shared": ParamSpec("shared", False, type=bool),
}


def _noise(t: torch.Tensor, scale: float, ctx: MergeContext) -> torch.Tensor:
    if not scale:
        return t
    noise = torch.randn(t.shape, generator=ctx.generator, dtype=torch.float32)
    return (t.float() + scale * noise).to(t.dtype)


def _assemble(tensors: Sequence[torch.Tensor], per_model, params: Mapping[str, Any], ctx: MergeContext) -> torch.Tensor:
    """One output tensor: ``copy`` (scaled, noised), fused ``gate_up``/``down``, ``router`` rows."""
    part = params["part"]
    noise, scale = params["noise"], params["scale"]
    if part == "copy":
        t = tensors[0] if scale == 1 else (tensors[0].float() * scale).to(tensors[0].dtype)
        return _noise(t, noise[0], ctx)
    if part == "gate_up":
        pairs = [torch.cat([tensors[2 * i], tensors[2 * i + 1]], dim=0) for i in range(len(tensors) // 2)]
        return torch.stack([_noise(t, n, ctx) for t, n in zip(pairs, noise)])
    if part == "down":
        return torch.stack([_noise((t.float() * s).to(t.dtype), n, ctx) for t, s, n in zip(tensors, scale, noise)])
    layer = params["layer"]
    rows = torch.stack([t[layer] for t in tensors])  # router: one row per expert; shared gate: one row
    return rows.contiguous()


METHOD = Method(
    name="moe:assemble",
    version=1,
    reference="https://arxiv.org/abs/2401.04088 (Mixtral); mergekit-moe",
    params=(
        ParamSpec("part", "copy", type=str),
        ParamSpec("layer", 0, type=int),
        ParamSpec("noise", (), type=tuple),
        ParamSpec("scale", 1.0),
    ),
    merge=_assemble,
    base=BaseRule.IGNORED,
    embed=EmbedPolicy.EXACT,
    random=True,  # noise_scale draws from the job's generator
    summary="Mixture of Experts assembled from dense models",
)


class MoeKind:
    """The ``moe`` target kind."""

    name = "moe"
    method = METHOD

    def plan(self, planner, t: Target) -> TargetPlan:
        kp = KindParams(planner, t, SPECS)
        if t.slices:
            raise ConfigError("moe() takes expert lines (model prompts=[...]), not slices", t.slices[0].loc)
        base_p = planner.setting(t, "base")
        if base_p is None:
            raise ConfigError(
                "moe() needs base=MODEL (attention, norms and embeddings come from it)", t.method_loc or t.loc
            )
        base = planner.model_setting(base_p)
        b = _Builder(planner, t, kp, base)
        return b.plan()


class _Builder:
    def __init__(self, planner, t: Target, kp: KindParams, base: InputModel):
        self.p, self.t, self.kp, self.base = planner, t, kp, base
        self.mode = kp.get("gate_mode")
        if self.mode not in GATE_MODES:
            raise ConfigError(f"unknown gate_mode '{self.mode}' (use {', '.join(GATE_MODES)})", kp.loc("gate_mode"))
        self.experts: list[tuple[InputModel, dict[str, Any], Any]] = []
        self.shared: list[tuple[InputModel, dict[str, Any], Any]] = []
        for s in t.sources:
            if s.layers is not None:
                raise ConfigError("an expert is a whole model: no layer range", s.loc)
            known = set(SOURCE_SPECS)
            for q in s.params:
                if q.name not in known:
                    from mergefile.errors import unknown

                    raise unknown("expert parameter", q.name, known, q.loc)
            vals = {
                n: source_value(s.params, n, spec, planner.variables, f"expert line of '{t.name}'")
                for n, spec in SOURCE_SPECS.items()
            }
            model = planner.resolver.resolve(s.ref, s.loc)
            (self.shared if vals["shared"] else self.experts).append((model, vals, s.loc))
        self.out_dtype = planner.dtype_setting(t, "out_dtype") or planner.dtype_setting(t, "dtype")
        seed_p = planner.setting(t, "seed")
        self.seed = int(substitute(seed_p.value, planner.variables)) if seed_p is not None else 0

    def _check(self) -> None:
        t, kp = self.t, self.kp
        if not self.experts:
            raise ConfigError(f"moe target '{t.name}' has no experts (lines like: math prompts=[\"...\"])", t.loc)
        if len(self.shared) > 1:
            raise ConfigError("at most one shared expert", self.shared[1][2])
        k = kp.get("experts_per_token")
        if not 1 <= k <= len(self.experts):
            raise ConfigError(
                f"experts_per_token must be between 1 and the number of experts ({len(self.experts)}), got {k}",
                kp.loc("experts_per_token"),
            )
        if self.mode not in RANDOM_MODES:
            seen: dict[tuple, Any] = {}
            for model, vals, loc in self.experts:
                if not vals["prompts"]:
                    raise ConfigError(
                        f"gate_mode {self.mode} needs prompts=[...] for expert '{model.label}'",
                        loc,
                        "or use gate_mode=random",
                    )
                key = (vals["prompts"], vals["negative"])
                if key in seen:
                    raise ConfigError(f"experts '{seen[key]}' and '{model.label}' have the same prompts", loc)
                seen[key] = model.label
        models = [m for m, _, _ in self.experts]
        self.notes: list[str] = []
        if len({id(m) for m in models}) < len(models) and not kp.get("allow_identical_experts"):
            if self.mode in RANDOM_MODES:  # mergekit's sparse upcycling: copies of one model, random routers
                self.notes.append(
                    "the same model is listed as several experts (sparse upcycling: useful once the MoE is trained)"
                )
                return
            raise ConfigError(
                "the same model is listed as two experts; that is only useful with training",
                self.t.loc,
                "set allow_identical_experts=true if you mean it",
            )

    def plan(self) -> TargetPlan:
        self._check()
        lay = self.base.get_layout()
        model_type = str(self.base.config.get("model_type", ""))
        arch = pick_arch(self.kp.get("architecture"), model_type, len(self.shared))
        if isinstance(arch, str):
            raise ConfigError(f"moe target '{self.t.name}': {arch}", self.kp.loc("architecture"))
        template = next((ln.template for ln in lay.templates(0) if ".mlp." in ln.template), None)
        if template is None or lay.num_layers == 0:
            raise ConfigError(
                f"base model '{self.base.label}' has no per-layer MLP tensors to turn into experts", self.t.loc
            )
        self.prefix = template.split(".{}.")[0]
        dense = set(mlp_names(self.prefix, 0).values())
        odd = [ln.at(0) for ln in lay.templates(0) if ".mlp." in ln.template and ln.at(0) not in dense]
        if odd:
            raise ConfigError(
                f"base model '{self.base.label}' has MLP tensor '{odd[0]}', which no MoE expert"
                " layout holds (only gate_proj/up_proj/down_proj weights)",
                self.t.loc,
            )
        if self.base.source is not None and self.mode not in RANDOM_MODES:
            raise ConfigError(
                f"moe base '{self.base.label}' has a LoRA applied: gate_mode {self.mode} reads the base"
                " from its folder; merge the adapter into a model target first",
                self.t.loc,
            )
        self.inputs: list[InputModel] = [self.base]
        for m, _, _ in self.experts + self.shared:
            if all(x is not m for x in self.inputs):
                self.inputs.append(m)
        self._check_shapes(lay.num_layers)
        hidden = int(self.base.tensors[mlp_names(self.prefix, 0)["down_proj"]].shape[0])
        gates = self._gates(lay, hidden)
        jobs = self._jobs(lay, gates, arch)
        inter = int(self.experts[0][0].tensors[mlp_names(self.prefix, 0)["gate_proj"]].shape[0])
        shared_inter = (
            int(self.shared[0][0].tensors[mlp_names(self.prefix, 0)["gate_proj"]].shape[0]) if self.shared else None
        )
        qkv_bias = any(n.endswith("self_attn.q_proj.bias") for n in self.base.tensors)
        config = arch.config(
            self.base.config, len(self.experts), self.kp.get("experts_per_token"), inter, shared_inter, qkv_bias
        )
        plan = TargetPlan(
            name=self.t.name,
            out_dir=self.p.base_dir / self.t.name,
            target=self.t,
            method=METHOD,
            inputs=self.inputs,
            jobs=jobs,
            config=config,
            donor=self.base,
            num_layers=lay.num_layers,
            layer_key=lay.layer_key,
            warnings=list(self.notes),
        )
        plan.assign_shards()
        plan.layout = MoeLayout(
            self.t, arch.name, [(m.label, v) for m, v, _ in self.experts], [(m.label, v) for m, v, _ in self.shared]
        )
        return plan

    def _check_shapes(self, layers: int) -> None:
        for group in (self.experts, self.shared):
            shapes = None
            for model, _, loc in group:
                if model.get_layout().num_layers != layers:
                    raise ConfigError(
                        f"expert '{model.label}' has {model.get_layout().num_layers} layers, the base {layers}", loc
                    )
                names = [n for i in range(layers) for n in mlp_names(self.prefix, i).values()]
                missing = [n for n in names if n not in model.tensors]
                if missing:
                    raise ConfigError(f"expert '{model.label}' has no tensor '{missing[0]}'", loc)
                got = [tuple(model.tensors[n].shape) for n in names]
                if shapes is not None and got != shapes:
                    raise ConfigError(f"expert '{model.label}' has MLP shapes unlike the other experts'", loc)
                shapes = got

    def _gates(self, lay, hidden: int) -> InputModel:
        prompts = [ExpertPrompts(f"gate.{i}", v["prompts"], v["negative"]) for i, (_, v, _) in enumerate(self.experts)]
        prompts += [ExpertPrompts("gate.shared", v["prompts"], v["negative"]) for _, v, _ in self.shared]
        source = GateVectors(self.base, self.mode, tuple(prompts), lay.num_layers, hidden, self.seed, lay.embedding)
        tensors = {e.name: TensorMeta(e.name, "F32", (lay.num_layers, hidden)) for e in prompts}
        # target= marks tensors made by this build (not model files): lockfile and graph skip them
        gates = InputModel(
            label=f"{self.t.name} gates",
            path=self.base.path,
            config={},
            tensors=tensors,
            target=self.t.name,
            source=source,
        )
        self.inputs.append(gates)
        return gates

    # -- jobs ------------------------------------------------------------------------
    def _job(
        self,
        name: str,
        group: tuple,
        refs: list[InputRef],
        params: dict,
        shape: tuple,
        code: str,
        dtype: str | None = None,
    ) -> TensorJob:
        out = dtype_code(self.out_dtype) if self.out_dtype else code
        full = {"part": "copy", "layer": 0, "noise": (0.0,), "scale": 1.0, **params}
        return TensorJob(
            name=name,
            group=group,
            method=METHOD.name,
            inputs=tuple(refs),
            base_index=None,
            params=freeze(full),
            per_model=((),) * len(refs),
            dtype=dtype,
            out_dtype=code_name(out),
            is_embed=False,
            seed=self.seed,
            result_dtype=out,
            result_shape=tuple(shape),
        )

    def _ref(self, model: InputModel, name: str) -> InputRef:
        return InputRef(next(i for i, x in enumerate(self.inputs) if x is model), name)

    def _jobs(self, lay, gates: InputModel, arch) -> list[TensorJob]:
        jobs = []
        for group, names in ((("pre",), lay.pre), (("post",), lay.post)):
            for n in names:
                info = self.base.tensors[n]
                jobs.append(self._job(n, group, [self._ref(self.base, n)], {}, info.shape, info.dtype))
        code = self.base.tensors[mlp_names(self.prefix, 0)["down_proj"]].dtype
        for i in range(lay.num_layers):
            group = ("layer", i)
            for ln in lay.templates(i):
                n = ln.at(i)
                if ".mlp." not in n:
                    info = self.base.tensors[n]
                    jobs.append(self._job(n, group, [self._ref(self.base, n)], {}, info.shape, info.dtype))
            jobs += self._layer_jobs(i, group, gates, code, arch)
        return jobs

    def _layer_jobs(self, i: int, group: tuple, gates: InputModel, code: str, arch) -> list[TensorJob]:
        dense, out = mlp_names(self.prefix, i), moe_names(self.prefix, i)
        e0 = self.experts[0][0]
        inter, hidden = e0.tensors[dense["gate_proj"]].shape
        n = len(self.experts)
        noise = tuple(float(v["noise_scale"]) for _, v, _ in self.experts)
        gate_up = [self._ref(m, dense[p]) for m, _, _ in self.experts for p in ("gate_proj", "up_proj")]
        jobs = [
            self._job(
                out["gate_up"], group, gate_up, {"part": "gate_up", "noise": noise}, (n, 2 * inter, hidden), code
            ),
            self._job(
                out["down"],
                group,
                [self._ref(m, dense["down_proj"]) for m, _, _ in self.experts],
                {
                    "part": "down",
                    "noise": noise,
                    "scale": tuple(float(v["residual_scale"]) for _, v, _ in self.experts),
                },
                (n, hidden, inter),
                code,
            ),
            self._job(
                out["router"],
                group,
                [self._ref(gates, f"gate.{k}") for k in range(n)],
                {"part": "router", "layer": i},
                (n, hidden),
                code,
                dtype=code_name(code),
            ),
        ]
        for m, v, _ in self.shared:
            for p in ("gate_proj", "up_proj", "down_proj"):
                scale = float(v["residual_scale"]) if p == "down_proj" else 1.0
                shape = m.tensors[dense[p]].shape
                jobs.append(
                    self._job(
                        out[f"shared_{p}"],
                        group,
                        [self._ref(m, dense[p])],
                        {"noise": (float(v["noise_scale"]),), "scale": scale},
                        shape,
                        code,
                    )
                )
            jobs.append(
                self._job(
                    out["shared_gate"],
                    group,
                    [self._ref(gates, "gate.shared")],
                    {"part": "router", "layer": i},
                    (1, hidden),
                    code,
                    dtype=code_name(code),
                )
            )
        return jobs


KIND = register_kind(MoeKind())
