"""The target graph: which targets a request needs, in build order, with cycles refused."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import networkx as nx

from mergefile.errors import ConfigError, unknown
from mergefile.syntax.ast import Mergefile, Param, Phony, Slice, Source, Sym, Target, normalize_name
from mergefile.syntax.target_paths import MODEL_PARAMS

__all__ = ["build_graph", "build_order", "default_goal", "normalize_name", "target_refs"]


def _syms(value) -> Iterator[Sym]:
    if isinstance(value, Sym):
        yield value
    elif isinstance(value, tuple):
        for v in value:
            yield from _syms(v)


def target_refs(target: Target) -> Iterator[Sym]:
    """Every bare name a target mentions as a model (sources, slices, base=...)."""
    params: list[Param] = list(target.params)
    sources: list[Source] = list(target.sources)
    for sl in target.slices:
        assert isinstance(sl, Slice)
        sources.extend(sl.sources)
        params.extend(sl.params)
    for src in sources:
        if isinstance(src.ref, Sym):
            yield src.ref
    for p in params:
        if p.name in MODEL_PARAMS:  # finetuned: lora(...), models: evolve(...)
            yield from _syms(p.value)
    for a in target.args:
        yield from _syms(a)
        if isinstance(a, Param):
            yield from _syms(a.value)


def build_graph(mf: Mergefile) -> nx.DiGraph:
    """Edges go from a prerequisite to the target that needs it."""
    g = nx.DiGraph()
    rules = mf.targets()
    models = mf.models()
    for name, rule in rules.items():
        g.add_node(name, rule=rule)
    for name, rule in rules.items():
        if isinstance(rule, Phony):
            for dep, loc in zip(rule.deps, rule.dep_locs or (None,) * len(rule.deps)):
                dep_n = normalize_name(dep)
                if dep_n not in rules:
                    raise unknown("target", dep, rules, loc or rule.loc)
                g.add_edge(dep_n, name)
            continue
        for sym in target_refs(rule):
            n = normalize_name(sym.name)
            if n in rules and sym.name not in models:
                g.add_edge(n, name)
    try:
        cycle = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        return g
    names = [u for u, _ in cycle] + [cycle[0][0]]
    first = rules[names[0]]
    raise ConfigError("dependency cycle: " + " -> ".join(names), getattr(first, "loc", None))


def default_goal(mf: Mergefile) -> str:
    """Like make: the first target or group in the file."""
    for s in mf.statements:
        if isinstance(s, (Target, Phony)):
            return s.name
    raise ConfigError(f"{mf.path} defines no targets")


def build_order(mf: Mergefile, g: nx.DiGraph, requested: Sequence[str]) -> list[str]:
    """Merge targets (not groups) needed for ``requested``, prerequisites first, file order on ties."""
    rules = mf.targets()
    goals = [normalize_name(r) for r in requested] or [default_goal(mf)]
    needed: set[str] = set()
    for goal in goals:
        if goal not in rules:
            raise unknown("target", goal, rules)
        needed |= nx.ancestors(g, goal) | {goal}
    position = {name: i for i, name in enumerate(rules)}
    sub = g.subgraph(needed)
    order = list(nx.lexicographical_topological_sort(sub, key=lambda n: position[n]))
    return [n for n in order if isinstance(rules[n], Target)]
