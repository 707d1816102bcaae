"""Genotype vectors <-> candidate merge targets (reference §9, mergekit-evolve's ``genome.py``).

A genotype has shape ``[layer groups, models, len(filters) + 1, params]`` (params: ``weight``,
``weight, density`` or ``t``), flattened for CMA-ES. :meth:`Genome.target` turns one into an
ordinary recipe :class:`~mergefile.syntax.ast.Target`, which the planner plans like any other:

* discrete (default): one ``slice`` per layer group, each model with its own parameters there;
* ``smooth``: whole models, each parameter a gradient across the groups;
* filters: each parameter is also set per filter (``weight[self_attn] = ...``), the last set is
  the unfiltered fallback;
* slerp: per group, the two models with the highest raw weight; the first is the slice's base
  and ``t = softmax(top2)[1]``.

Weights and ``t`` are taken as ``|x|`` unless ``allow_negative_weights``; densities are
``|x|`` clamped to [0, 1]. Every value is rounded to 6 significant digits *before* the
candidate is built, so the recipe written for the best candidate rebuilds it bit for bit.
Pure NumPy: no torch here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mergefile.errors import ConfigError
from mergefile.syntax.ast import Param, Slice, Source, Sym, Target
from mergefile.targets.evolve.config import GenomeDef

__all__ = ["Genome", "round6"]

GTA_METHODS = ("task_arithmetic", "ties", "dare_ties")
NORMALIZE_DEFAULT = ("ties", "dare_ties", "linear")


def round6(v: float) -> float:
    """6 significant digits, as a plain float; -0.0 becomes 0.0."""
    r = float(f"{float(v):.6g}")
    return 0.0 if r == 0 else r


@dataclass(frozen=True)
class Genome:
    """The search space of one genome over models of ``num_layers`` layers."""

    definition: GenomeDef
    num_layers: int

    def __post_init__(self) -> None:
        g = self.definition.layer_granularity
        if g > 0 and self.num_layers % g:
            raise ConfigError(
                f"layer_granularity {g} does not divide the models' {self.num_layers} layers",
                None,
                "choose a divisor of the layer count, or 0 for one group",
            )

    @property
    def groups(self) -> int:
        g = self.definition.layer_granularity
        return self.num_layers // g if g > 0 else 1

    @property
    def step(self) -> int:
        g = self.definition.layer_granularity
        return g if g > 0 else self.num_layers

    @property
    def shape(self) -> tuple[int, int, int, int]:
        d = self.definition
        return (self.groups, len(d.models), len(d.filters) + 1, len(d.params))

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def initial(self, rng: np.random.Generator | None = None) -> np.ndarray:
        """mergekit's x0: weight 1/N, density 1 (or uniform in [0, 1) with ``rng``)."""
        if rng is not None:
            return rng.uniform(0.0, 1.0, self.size)
        x = np.zeros(self.shape)
        x[..., 0] = 1.0 / len(self.definition.models)
        if x.shape[-1] > 1:
            x[..., 1:] = 1.0
        return x.reshape(-1)

    def values(self, x) -> dict[str, np.ndarray]:
        """Parameter arrays ``[groups, models, sets]`` as they enter the recipe (abs, clamp, round)."""
        g = np.asarray(x, dtype=np.float64).reshape(self.shape)
        out = {}
        for i, name in enumerate(self.definition.params):
            v = g[..., i]
            if name == "density":
                v = np.clip(np.abs(v), 0.0, 1.0)
            elif not self.definition.allow_negative_weights:
                v = np.abs(v)
            out[name] = np.vectorize(round6, otypes=[float])(v)
        return out

    def describe(self, x) -> dict[str, list[float]]:
        """Readable parameters for the history: ``model.param[filter]`` -> value per layer group."""
        d = self.definition
        if d.merge_method == "slerp":
            return {
                f"group{gi}": self._slerp_choice(np.asarray(x).reshape(self.shape), gi)[2:] for gi in range(self.groups)
            }
        out = {}
        for name, arr in self.values(x).items():
            for mi, (model, _) in enumerate(d.models):
                for si, filt in enumerate((*d.filters, None)):
                    label = f"{model}.{name}" + (f"[{filt}]" if filt else "")
                    out[label] = [float(v) for v in arr[:, mi, si]]
        return out

    # -- the candidate recipe ----------------------------------------------------------------
    def target(self, x, name: str) -> Target:
        """The candidate merge recipe of genotype ``x``, as a target named ``name``."""
        d = self.definition
        if d.merge_method == "slerp":
            slices = self._slerp_slices(np.asarray(x, dtype=np.float64).reshape(self.shape))
            return Target(name, "slerp", self._settings(), (), tuple(slices))
        values = self.values(x)
        if d.smooth:
            return Target(name, d.merge_method, self._settings(), self._smooth_sources(values))
        return Target(name, d.merge_method, self._settings(), (), tuple(self._discrete_slices(values)))

    def _settings(self) -> tuple[Param, ...]:
        d = self.definition
        params: list[Param] = []
        if d.base_model is not None and d.merge_method != "linear":
            params.append(Param("base", Sym(d.base_model[0])))
        if d.merge_method != "slerp":
            normalize = d.normalize if d.normalize is not None else d.merge_method in NORMALIZE_DEFAULT
            params.append(Param("normalize", bool(normalize)))
        if d.merge_method in GTA_METHODS:
            params.append(Param("int8_mask", True))
        if d.dtype:
            params.append(Param("dtype", Sym(d.dtype)))
        if d.tokenizer_source is not None:
            tok = d.tokenizer_source
            params.append(Param("tokenizer_source", tok if isinstance(tok, Sym) else Sym(tok[0])))
        return tuple(params)

    def _model_params(self, values: dict[str, np.ndarray], group, mi: int) -> tuple[Param, ...]:
        """One model's parameters: per filter then unfiltered; ``group`` an index or a slice."""
        d = self.definition
        out = []
        for pname, arr in values.items():
            for si, filt in enumerate((*d.filters, None)):
                v = arr[group, mi, si]
                value = float(v) if np.ndim(v) == 0 else (tuple(float(a) for a in v) if len(v) > 1 else float(v[0]))
                out.append(Param(pname, value, filt))
        return tuple(out)

    def _range(self, gi: int) -> tuple[int, int]:
        return (gi * self.step, (gi + 1) * self.step)

    def _needs_base_source(self) -> bool:
        d = self.definition
        names = {n for n, _ in d.models}
        return d.base_model is not None and d.base_model[0] not in names and d.merge_method != "linear"

    def _discrete_slices(self, values) -> list[Slice]:
        d = self.definition
        slices = []
        for gi in range(self.groups):
            rng = self._range(gi)
            sources = [Source(Sym(m), rng, self._model_params(values, gi, mi)) for mi, (m, _) in enumerate(d.models)]
            if self._needs_base_source():
                sources.append(Source(Sym(d.base_model[0]), rng))
            slices.append(Slice(tuple(sources)))
        return slices

    def _smooth_sources(self, values) -> tuple[Source, ...]:
        d = self.definition
        sources = [
            Source(Sym(m), None, self._model_params(values, slice(None), mi)) for mi, (m, _) in enumerate(d.models)
        ]
        if self._needs_base_source():
            sources.append(Source(Sym(d.base_model[0])))
        return tuple(sources)

    def _slerp_choice(self, g: np.ndarray, gi: int) -> tuple[int, int, str, str, float]:
        raw = g[gi, :, 0, 0]
        order = sorted(range(len(raw)), key=lambda i: (-raw[i], i))  # stable top-2
        first, second = order[0], order[1]
        a, b = raw[first], raw[second]
        m = max(a, b)
        t = round6(math.exp(b - m) / (math.exp(a - m) + math.exp(b - m)))
        names = [n for n, _ in self.definition.models]
        return first, second, names[first], names[second], t

    def _slerp_slices(self, g: np.ndarray) -> list[Slice]:
        slices = []
        for gi in range(self.groups):
            rng = self._range(gi)
            _, _, first, second, t = self._slerp_choice(g, gi)
            sources = (Source(Sym(first), rng), Source(Sym(second), rng))
            slices.append(Slice(sources, (Param("base", Sym(first)), Param("t", t))))
        return slices
