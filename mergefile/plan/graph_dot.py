"""The target graph as Graphviz DOT text, written without any library.

Input models (local folders, hub snapshots) feed targets (each a merge stage), targets feed
later targets and groups. Each target carries its build state, so ``mergebuild graph`` shows at
a glance what a build would redo: stale targets are red, up-to-date ones green.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import networkx as nx

from mergefile.plan.graph import normalize_name
from mergefile.plan.jobs import TargetPlan
from mergefile.syntax.ast import Mergefile, Phony

STALE_STYLE = 'style="filled,bold" fillcolor="#f8d0d0" color="#c00000"'
FRESH_STYLE = 'style="filled" fillcolor="#d8f0d8" color="#2a7a2a"'


@dataclass(frozen=True)
class TargetState:
    """What the graph says about one target: stale or not, and a short why."""

    stale: bool
    note: str = ""


def quote(text: str) -> str:
    """A DOT double-quoted string (ids and labels); newlines become DOT's centred ``\\n``."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _model_id(plan_input) -> tuple[str, str]:
    """(node id, label) of an input model: the same folder is one node for every target."""
    if plan_input.hub is not None:
        repo, rev = plan_input.hub
        commit = plan_input.path.rstrip("/").rsplit("/", 1)[-1]
        label = f"{plan_input.label}\nhf: {repo}" + (f"@{rev}" if rev else "") + f"\n{commit[:10]}"
        return f"model:{plan_input.path}", label
    name = plan_input.path.rstrip("/").rsplit("/", 1)[-1]
    label = plan_input.label if plan_input.label == name else f"{plan_input.label}\n{name}"
    return f"model:{plan_input.path}", label


def _edges_of(plan: TargetPlan) -> Iterable[tuple[str, str, str]]:
    """(source id, target id, edge label) for the inputs of one plan."""
    bases = {job.inputs[job.base_index].model for job in plan.jobs if job.base_index is not None}
    for i, model in enumerate(plan.inputs):
        src = f"target:{model.target}" if model.target is not None else _model_id(model)[0]
        yield src, f"target:{plan.name}", "base" if i in bases else ""


def target_graph_dot(
    mf: Mergefile,
    graph: nx.DiGraph,
    plans: Mapping[str, TargetPlan],
    states: Mapping[str, TargetState],
    only: set[str] | None = None,
) -> str:
    """DOT text of ``models -> targets -> groups``.

    Args:
        mf: the recipe (for groups).
        graph: :func:`mergefile.plan.graph.build_graph` of it.
        plans: the plans of the targets to draw (their inputs give the model nodes).
        states: per target, stale or not (targets without a state are drawn plain).
        only: names of targets/groups to draw (None: every one in ``graph``).

    Returns:
        A ``digraph`` ending with a newline.
    """
    rules = mf.targets()
    names = [n for n in rules if only is None or n in only]
    lines = [
        "digraph mergebuild {",
        "  rankdir=LR;",
        '  node [fontname="Helvetica" fontsize=10];',
        '  edge [fontname="Helvetica" fontsize=9 color="#555555"];',
    ]
    models: dict[str, str] = {}
    for plan in plans.values():
        for m in plan.inputs:
            if m.target is None:
                mid, label = _model_id(m)
                models.setdefault(mid, label)
    for mid, label in sorted(models.items()):
        lines.append(f"  {quote(mid)} [label={quote(label)} shape=cylinder];")
    for name in names:
        rule = rules[name]
        if isinstance(rule, Phony):
            lines.append(f"  {quote('group:' + name)} [label={quote(name)} shape=folder style=dashed];")
            continue
        plan = plans.get(name)
        label = name if plan is None else f"{name}\n{plan.method.name}, {len(plan.jobs)} tensors"
        state = states.get(name)
        style = ""
        if state is not None:
            label += f"\n{state.note or ('stale' if state.stale else 'up to date')}"
            style = " " + (STALE_STYLE if state.stale else FRESH_STYLE)
        lines.append(f"  {quote('target:' + name)} [label={quote(label)} shape=box{style}];")
    edges: set[tuple[str, str, str]] = set()
    for plan in plans.values():
        if plan.name in names:
            edges.update(_edges_of(plan))
    for name in names:
        if isinstance(rules[name], Phony):
            for dep in rules[name].deps:
                dep = normalize_name(dep)
                kind = "group" if isinstance(rules.get(dep), Phony) else "target"
                if dep in names:
                    edges.add((f"{kind}:{dep}", f"group:{name}", ""))
    for src, dst, label in sorted(edges):
        attr = f" [label={quote(label)}]" if label else ""
        lines.append(f"  {quote(src)} -> {quote(dst)}{attr};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def selection(graph: nx.DiGraph, requested: Iterable[str]) -> set[str] | None:
    """Targets/groups to draw for the requested names: each with everything it needs."""
    req = [normalize_name(r) for r in requested]
    if not req:
        return None
    out: set[str] = set()
    for r in req:
        out |= nx.ancestors(graph, r) | {r}
    return out
