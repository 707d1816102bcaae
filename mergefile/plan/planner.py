"""AST -> per-tensor plan. Everything that needs no tensor data is checked here, before any read.

The planner resolves models (headers and config.json only), validates method, parameter and
setting names, layer ranges and shapes, expands slices into renumbered per-layer tensors, and
resolves every parameter for every tensor (precedence: source > slice > target > file default >
method default).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mergefile.arch.generic import LayerLayout, is_embedding
from mergefile.arch.slicing import check_architectures, loose_inputs, rewrite_config
from mergefile.errors import ConfigError, Loc, UserError, unknown
from mergefile.methods.base import BaseRule, EmbedPolicy, Method
from mergefile.methods.registry import get_method
from mergefile.plan.checks import check_params, density_warnings
from mergefile.plan.graph import normalize_name
from mergefile.plan.inputs import InputModel, ModelResolver, ResolveOptions
from mergefile.plan.jobs import InputRef, TargetPlan, TensorJob, freeze
from mergefile.plan.kinds import kind
from mergefile.plan.modules import modular_arch, plan_modules
from mergefile.plan.params import Level, layer_t, resolve, substitute
from mergefile.plan.pool import Inputs, check_unique
from mergefile.plan.tokenizer_recipe import TOKENIZER_SETTINGS
from mergefile.plan.vocab import fit_config, plan_vocab
from mergefile.syntax.ast import AutoRef, HfRef, Mergefile, Module, Param, PathRef, Phony, Slice, Source, Sym, Target

SETTINGS = ("base", "dtype", "out_dtype", "seed", *TOKENIZER_SETTINGS)
SLICE_SETTINGS = ("base",)
_REF_TYPES = (Sym, HfRef, PathRef, AutoRef)
LayoutOf = Callable[[InputModel], LayerLayout]  # a model's layout (of the whole model, or of one module)
Holder = Target | Module  # what holds sources or slices


def whole_layout(m: InputModel) -> LayerLayout:
    return m.get_layout()


@dataclass
class _Src:
    model: InputModel
    ast: Source
    start: int
    end: int


@dataclass
class _Slice:
    sources: list[_Src]
    params: tuple[Param, ...]
    base_index: int | None
    template: int  # which source names the output tensors
    loc: Loc | None
    outer: tuple[Param, ...] = ()  # module-level parameters (between slice and target)

    @property
    def length(self) -> int:
        return self.sources[0].end - self.sources[0].start


class Planner:
    """Plans targets of one Mergefile; memoises plans so multi-stage inputs are planned once."""

    def __init__(self, mf: Mergefile, options: ResolveOptions | None = None):
        self.mf = mf
        self.rules = mf.targets()
        self.base_dir = Path(mf.path).resolve().parent if mf.path not in ("<string>", "") else Path.cwd()
        self.file_params = tuple(Param(a.name, a.value, None, a.loc) for a in mf.assigns().values())
        self.variables = {a.name: a.value for a in mf.assigns().values()}
        self.resolver = ModelResolver(
            {m.name: m.ref for m in mf.models().values()},
            self.base_dir,
            self._target_output,
            set(self.rules),
            options,
        )
        self.plans: dict[str, TargetPlan] = {}
        self._outputs: dict[str, InputModel] = {}  # one object per target: base=X with X listed is one input

    def _target_output(self, name: str) -> InputModel | None:
        rule = self.rules.get(normalize_name(name))
        if rule is None or isinstance(rule, Phony):
            return None
        if rule.name not in self._outputs:
            self._outputs[rule.name] = self.plan(rule.name).as_output_model()
        return self._outputs[rule.name]

    def plan(self, name: str) -> TargetPlan:
        name = normalize_name(name)
        if name not in self.plans:
            rule = self.rules[name]
            assert isinstance(rule, Target)
            self.plans[name] = self._plan(rule)
            self.plans[name].warnings.extend(self.resolver.take_notes())
        return self.plans[name]

    # -- settings and names -------------------------------------------------------------
    def _check_names(self, t: Target, method: Method) -> None:
        allowed = set(SETTINGS) | {p.name for p in method.params}
        for p in t.params:
            if p.name not in allowed:
                raise _unknown_param(p, method, allowed)
        method_names = {q.name for q in method.params}
        slices = list(t.slices) + [sl for m in t.modules for sl in m.slices]
        for sl in slices:
            for p in sl.params:
                if p.name not in set(SLICE_SETTINGS) | method_names:
                    raise _unknown_param(p, method, set(SLICE_SETTINGS) | method_names)
        for p in (p for m in t.modules for p in m.params):
            if p.name not in method_names:
                raise _unknown_param(p, method, method_names)
        for src in (
            list(t.sources) + [s for m in t.modules for s in m.sources] + [s for sl in slices for s in sl.sources]
        ):
            for p in src.params:
                spec = method.param(p.name)
                if spec is None:
                    raise _unknown_param(p, method, {q.name for q in method.model_params})
                if not spec.per_model:
                    raise ConfigError(
                        f"'{p.name}' is a global parameter of {method.name}: set it on the target or a slice, not on one model",
                        p.loc,
                    )

    def setting(self, t: Target, name: str) -> Param | None:
        """The target's unfiltered ``name`` parameter (its last), else the file's global one."""
        for p in reversed(t.params):
            if p.name == name and p.filter is None:
                return p
        for p in self.file_params:
            if p.name == name:
                return p
        return None

    def dtype_setting(self, t: Target, name: str) -> str | None:
        """The dtype named by setting ``name`` (``dtype``, ``out_dtype``) as a code name, or None."""
        from mergefile.io.header import code_name, dtype_code

        p = self.setting(t, name)
        if p is None:
            return None
        value = substitute(p.value, self.variables)
        text = value.name if isinstance(value, Sym) else value
        if not isinstance(text, str):
            raise ConfigError(f"'{name}' must be a dtype name such as bfloat16, got {value!r}", p.loc)
        try:
            return code_name(dtype_code(text))
        except UserError as e:
            raise ConfigError(e.message, p.loc, e.hint) from None

    def model_setting(self, p: Param | None) -> InputModel | None:
        """The input model a parameter names (``base=``, ``finetuned=``), resolved; None for no parameter."""
        if p is None:
            return None
        value = substitute(p.value, self.variables)
        if isinstance(value, str):
            value = PathRef(value, p.loc)
        if not isinstance(value, _REF_TYPES):
            raise ConfigError(f"'{p.name}' must name a model, got {value!r}", p.loc)
        return self.resolver.resolve(value, p.loc)

    # -- slices -------------------------------------------------------------------------
    def sources(
        self, h: Holder, method: Method, base: InputModel | None, what: str, layout_of: LayoutOf = whole_layout
    ) -> list[_Slice]:
        """The slices of a target or a module (``what`` names it in errors)."""
        if h.sources and h.slices:
            raise ConfigError(f"{what} mixes model lines and 'slice' lines; use one or the other", h.loc)
        if not h.sources and not h.slices:
            if base is None:
                raise ConfigError(f"{what} has no input models", h.loc)
        if not h.slices:
            return [self._whole_models(h, method, base, what, layout_of)]
        return [self._slice(sl, method, base, layout_of, isinstance(h, Module)) for sl in h.slices]

    def _whole_models(
        self, h: Holder, method: Method, base: InputModel | None, what: str, layout_of: LayoutOf
    ) -> _Slice:
        srcs: list[_Src] = []
        for s in h.sources:
            if s.layers is not None:
                raise ConfigError("a layer range belongs in a 'slice' line, not on a model line", s.loc)
            m = self.resolver.resolve(s.ref, s.loc)
            if any(x.model is m for x in srcs):
                raise ConfigError(f"model '{m.label}' is listed twice in {what}", s.loc)
            srcs.append(_Src(m, s, 0, layout_of(m).num_layers))
        base_index = next((i for i, x in enumerate(srcs) if base is not None and x.model is base), None)
        if base is not None and base_index is None and method.base is not BaseRule.IGNORED:
            srcs.append(_Src(base, Source(Sym(base.label)), 0, layout_of(base).num_layers))
            base_index = len(srcs) - 1
        if method.base is BaseRule.IGNORED:
            base_index = None
        counts = {x.model.label: x.end for x in srcs}
        if len(set(counts.values())) > 1:
            detail = ", ".join(f"{k}: {v}" for k, v in counts.items())
            raise ConfigError(f"models of {what} have different layer counts ({detail}); use slices", h.loc)
        template = base_index if base_index is not None else 0
        return _Slice(srcs, (), base_index, template, h.loc)

    def _slice(
        self, sl: Slice, method: Method, base: InputModel | None, layout_of: LayoutOf, module: bool = False
    ) -> _Slice:
        srcs: list[_Src] = []
        for s in sl.sources:
            m = self.resolver.resolve(s.ref, s.loc)
            if s.layers is None:
                raise ConfigError("a slice source needs a layer range, e.g. model[0:8]", s.loc)
            start, end = s.layers
            n = layout_of(m).num_layers
            if n == 0 and module:
                raise ConfigError("this module has no layer stack to slice: list its models instead", s.loc)
            if n == 0:
                raise ConfigError(
                    f"cannot slice model '{m.label}': its layer count cannot be inferred (no tensor names like "
                    "'model.layers.N.…' and no num_hidden_layers/n_layer in config.json)",
                    s.loc,
                )
            if start < 0 or end <= start:
                raise ConfigError(f"bad layer range [{start}:{end}] (need 0 <= start < end)", s.loc)
            if end > n:
                raise ConfigError(
                    f"layer range [{start}:{end}] is beyond model '{m.label}', which has {n} layers", s.loc
                )
            srcs.append(_Src(m, s, start, end))
        lengths = {x.end - x.start for x in srcs}
        if len(lengths) > 1:
            raise ConfigError("all sources of a slice must span the same number of layers", sl.loc)
        slice_base = next((p for p in sl.params if p.name == "base"), None)
        b = self.model_setting(slice_base) if slice_base else base
        base_index = next((i for i, x in enumerate(srcs) if b is not None and x.model is b), None)
        if method.base is BaseRule.IGNORED:
            base_index = None
        elif method.base is BaseRule.REQUIRED and base_index is None and len(srcs) > 1:
            who = f"'{b.label}'" if b else "a base model (base=...)"
            raise ConfigError(f"{method.name} needs {who} among the sources of this slice", sl.loc)
        params = tuple(p for p in sl.params if p.name != "base")
        template = base_index if base_index is not None else 0
        return _Slice(srcs, params, base_index, template, sl.loc)

    # -- the plan -----------------------------------------------------------------------
    def _plan(self, t: Target) -> TargetPlan:
        target_kind = kind(t.method)
        if target_kind is not None:  # lora(...), moe(...): not merges; the kind plans jobs and layout
            return target_kind.plan(self, t)

        method = get_method(t.method, t.method_loc or t.loc)
        self._check_names(t, method)
        base = self.model_setting(self.setting(t, "base"))
        arch = modular_arch(self, t, base)
        if arch is not None:  # mergekit "modules:" (VLMs, encoder-decoders): one stack per module
            return plan_modules(self, t, method, base, arch)
        if method.base is BaseRule.REQUIRED and base is None and not t.slices:
            raise ConfigError(f"{method.name} needs a base model: add base=MODEL", t.method_loc or t.loc)
        named = [self.resolver.resolve(s.ref, s.loc) for s in [*t.sources, *(s for sl in t.slices for s in sl.sources)]]
        if base is not None and method.base is not BaseRule.IGNORED:
            named.append(base)
        warnings = check_architectures(
            [(m.label, m.config) for m in named], self.resolver.options.allow_crimes, t.name, t.loc
        )  # before layer counts: a different class explains those
        warnings += density_warnings(t)
        slices = self.sources(t, method, base, f"target '{t.name}'")
        models = [s.model for sl in slices for s in sl.sources]
        warnings += list(dict.fromkeys(f"{m.label}: {n}" for m in models for n in m.get_layout().notes))
        pool = Inputs()
        for m in models:
            pool.index_of(m)
        jobs, layer_map = self.stack_jobs(self.job_factory(t, method, warnings, pool), slices, whole_layout, None)
        check_unique(jobs, t)
        inputs = pool.models
        donor = next(
            (s.model for s in slices[0].sources if base is not None and s.model is base),
            slices[0].sources[slices[0].template].model,
        )
        layout = donor.get_layout()
        config, notes = rewrite_config(donor.config, layout, layer_map, any(layout.is_head(j.name) for j in jobs))
        warnings += notes
        vocab = plan_vocab(self, t, base, donor, inputs, jobs, warnings)
        if vocab is not None and vocab.size is not None:
            jobs = vocab.apply(jobs, inputs)
            fit_config(config, layout, vocab.size)
        plan = TargetPlan(
            name=t.name,
            out_dir=(self.base_dir / t.name),
            target=t,
            method=method,
            inputs=inputs,
            jobs=jobs,
            config=config,
            donor=vocab.donor if vocab is not None else donor,
            num_layers=len(layer_map),
            layer_key=layout.layer_key,
            warnings=warnings,
            vocab=vocab,
        )
        plan.assign_shards()
        return plan

    def job_factory(self, t: Target, method: Method, warnings: list[str], inputs: Inputs) -> _JobFactory:
        dtype, out_dtype = self.dtype_setting(t, "dtype"), self.dtype_setting(t, "out_dtype")
        seed_p = self.setting(t, "seed")
        seed = int(substitute(seed_p.value, self.variables)) if seed_p else 0
        return _JobFactory(self, t, method, dtype, out_dtype, seed, warnings, inputs.index_of)

    def stack_jobs(
        self, ctx: _JobFactory, slices: list[_Slice], layout_of: LayoutOf, module: str | None
    ) -> tuple[list[TensorJob], list[tuple]]:
        """Jobs of one layer stack: pre-layer tensors from the first slice, renumbered layers,
        post-layer tensors from the last slice. ``module`` tags the shard groups (None: a
        single-module model) and makes token-indexed tensors, not name look-alikes, embeddings."""
        tag = (module,) if module is not None else ()
        jobs: list[TensorJob] = []
        first, last = slices[0], slices[-1]

        def embed(name: str, sl: _Slice) -> bool | None:
            if module is None:
                return None
            lay = layout_of(sl.sources[sl.template].model)
            return name in lay.vocab or name in lay.head_names or name == lay.embedding

        for name, names in loose_inputs([layout_of(s.model) for s in first.sources], first.template, "pre"):
            jobs.append(ctx.job(name, ("pre", *tag), first, names, 0.0, embed(name, first)))
        layer_map: list[tuple] = []  # output layer -> (template model id, source layer, template model)
        out_layer = 0
        for sl in slices:
            tsrc = sl.sources[sl.template]
            lay = layout_of(tsrc.model)
            for j in range(sl.length):
                for ln in lay.templates(tsrc.start + j):
                    names = [ln.at(s.start + j) for s in sl.sources]
                    jobs.append(
                        ctx.job(
                            ln.at(out_layer),
                            ("layer", out_layer, *tag),
                            sl,
                            names,
                            layer_t(j, sl.length),
                            False if module is not None else None,
                        )
                    )
                layer_map.append((id(tsrc.model), tsrc.start + j, tsrc.model))
                out_layer += 1
        for name, names in loose_inputs([layout_of(s.model) for s in last.sources], last.template, "post"):
            jobs.append(ctx.job(name, ("post", *tag), last, names, 0.0, embed(name, last)))
        return jobs, layer_map


class _JobFactory:
    """Builds TensorJobs for one target; keeps the per-target context out of signatures."""

    def __init__(self, planner, t, method, dtype, out_dtype, seed, warnings, index_of):
        self.p, self.t, self.method = planner, t, method
        self.dtype, self.out_dtype, self.seed = dtype, out_dtype, seed
        self.warnings, self.index_of = warnings, index_of
        self.target_params = tuple(q for q in t.params if q.name not in SETTINGS)
        self.file_params = tuple(q for q in planner.file_params if method.param(q.name) is not None)

    def job(
        self, out_name: str, group: tuple, sl: _Slice, names: Sequence[str], tpos: float, embed: bool | None = None
    ) -> TensorJob:
        """One output tensor; ``embed`` None: an embedding when its name looks like one."""
        method = self.method
        srcs = list(sl.sources)
        names = list(names)
        base_index = sl.base_index
        for s, n in zip(srcs, names):
            if n not in s.model.tensors:
                raise ConfigError(
                    f"tensor '{n}' is missing from model '{s.model.label}' (needed for '{out_name}')",
                    s.ast.loc or self.t.loc,
                )
        shapes = [tuple(s.model.tensors[n].shape) for s, n in zip(srcs, names)]
        embed = (is_embedding(out_name) or _vocab_bias(srcs, names)) if embed is None else embed
        keep = list(range(len(srcs)))
        if len(set(shapes)) > 1:
            keep = self._check_shapes(out_name, srcs, shapes, embed, base_index)
        if len(keep) != len(srcs):
            base_index = keep.index(base_index) if base_index is not None else None
            srcs = [srcs[i] for i in keep]
            names = [names[i] for i in keep]
            shapes = [shapes[i] for i in keep]
        n_models = len(srcs)
        if n_models < method.min_models or (method.max_models is not None and n_models > method.max_models):
            want = (
                f"exactly {method.min_models}"
                if method.max_models == method.min_models
                else f"at least {method.min_models}"
                + (f" and at most {method.max_models}" if method.max_models else "")
            )
            got = ", ".join(s.model.label for s in srcs)
            raise ConfigError(
                f"{method.name} needs {want} input models (base included), got {n_models}: {got}", sl.loc or self.t.loc
            )
        levels_global = [
            Level("slice", sl.params),
            Level("module", sl.outer),
            Level("target", self.target_params),
            Level("file", self.file_params),
        ]
        here = sl.loc or self.t.loc
        params = {
            spec.name: resolve(
                spec, levels_global, out_name, tpos, self.p.variables, where=f"of target '{self.t.name}'", loc=here
            )
            for spec in method.global_params
        }
        per_model = []
        for i, (s, n) in enumerate(zip(srcs, names)):
            levels = [Level(f"model {s.model.label}", s.ast.params)] + levels_global
            where = f"for model '{s.model.label}' in target '{self.t.name}'"
            per_model.append(
                {
                    spec.name: resolve(
                        spec,
                        levels,
                        n,
                        tpos,
                        self.p.variables,
                        required=i != base_index,
                        where=where,
                        loc=s.ast.loc or here,
                    )
                    for spec in method.model_params
                }
            )
        check_params(
            method,
            params,
            per_model,
            base_index,
            [(s.model.label, s.ast.loc) for s in srcs],
            here,
            out_name,
            self.t.name,
        )
        return TensorJob(
            name=out_name,
            group=group,
            method=method.name,
            inputs=tuple(InputRef(self.index_of(s.model), n) for s, n in zip(srcs, names)),
            base_index=base_index,
            params=freeze(params),
            per_model=tuple(freeze(pm) for pm in per_model),
            dtype=self.dtype,
            out_dtype=self.out_dtype,
            is_embed=embed,
            seed=self.seed,
            result_dtype=self._result_dtype(srcs, names, base_index),
            result_shape=_result_shape(method, shapes, base_index),
        )

    def _check_shapes(self, out_name, srcs, shapes, embed, base_index) -> list[int]:
        policy = self.method.embed
        detail = ", ".join(f"{s.model.label} {list(sh)}" for s, sh in zip(srcs, shapes))
        if embed and policy is not EmbedPolicy.EXACT:
            return list(range(len(srcs)))
        if policy is EmbedPolicy.BASE and base_index is not None:
            keep = [i for i, sh in enumerate(shapes) if sh == shapes[base_index]]
            self.warnings.append(f"{out_name}: shapes differ ({detail}); using only models matching the base")
            return keep
        raise ConfigError(f"tensor '{out_name}' has different shapes: {detail}", self.t.loc)

    def _result_dtype(self, srcs, names, base_index) -> str:
        from mergefile.io.header import dtype_code

        if self.out_dtype or self.dtype:
            return dtype_code(self.out_dtype or self.dtype)
        i = base_index if base_index is not None else 0
        return srcs[i].model.tensors[names[i]].dtype


def _result_shape(method: Method, shapes: list[tuple], base_index: int | None) -> tuple[int, ...]:
    if method.embed is EmbedPolicy.BASE and base_index is not None:
        return shapes[base_index]
    if len(set(shapes)) == 1:
        return shapes[0]
    return tuple(min(d) for d in zip(*shapes))


def _vocab_bias(srcs, names) -> bool:
    """A head's vocabulary-sized 1-D bias (BERT's ``cls.predictions.bias``, mergekit's
    ``vocabulary_axis: 0``): its rows are token ids, as an embedding's are."""
    for s, n in zip(srcs, names):
        shape = tuple(s.model.tensors[n].shape)
        size = s.model.config.get(s.model.get_layout().vocab_key)
        if not (n.endswith("bias") and len(shape) == 1 and shape[0] == size and "norm" not in n.lower()):
            return False
    return True


def _unknown_param(p: Param, method: Method, allowed: set[str]) -> ConfigError:
    err = unknown(f"parameter for {method.name}", p.name, allowed, p.loc)
    return err


def plan_targets(mf: Mergefile, names: Sequence[str], options: ResolveOptions | None = None) -> list[TargetPlan]:
    """Plan the given targets (already in build order)."""
    planner = Planner(mf, options)
    return [planner.plan(n) for n in names]
