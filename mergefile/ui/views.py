"""The target and cache views' data, read from the plan, the build log and the blob store.

Parameters shown in the heat map are the ones the planner resolved for each tensor job (the
values the merge will use: gradients interpolated, filters applied); times are the ``seconds``
the build log recorded for each computed tensor; cache figures are ``cache stats`` and
``cache gc --dry-run``'s, computed by the same library functions (``run/history.py``,
``run/usage.py``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from mergefile.errors import unknown

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from mergefile.plan.jobs import TargetPlan
    from mergefile.store.log import BuildLog
    from mergefile.ui.session import RecipeSession

_LAYER = re.compile(r"\.(\d+)\.")
MAX_TIMES = 400  # per-tensor rows sent to the page (slowest first)


def _kind(job) -> str:
    """A tensor's kind: its name with the layer index taken out (``model.layers.*.mlp...``)."""
    return _LAYER.sub(".*.", job.name, count=1) if job.group[0] == "layer" else job.name


def _column(group: tuple) -> str:
    return f"L{group[1]}" if group[0] == "layer" else group[0]


def heat_map(plan: TargetPlan) -> dict[str, Any]:
    """Numeric parameters per (tensor kind, layer) as the planner resolved them.

    Returns:
        ``{"columns": [...], "kinds": [...], "params": {name: [[value|None per column] per kind]}}``;
        a per-model parameter is named ``model: param``.
    """
    columns: list[str] = []
    for job in plan.jobs:  # jobs come in shard order: pre, layers, post
        c = _column(job.group)
        if c not in columns:
            columns.append(c)
    kinds = list(dict.fromkeys(_kind(j) for j in plan.jobs))
    cells: dict[str, dict[tuple[str, str], float]] = {}
    for job in plan.jobs:
        at = (_kind(job), _column(job.group))
        for k, v in job.params:
            _put(cells, k, at, v)
        for ref, frozen in zip(job.inputs, job.per_model):
            label = plan.inputs[ref.model].label
            for k, v in frozen:
                _put(cells, f"{label}: {k}", at, v)
    params = {name: [[vals.get((kind, c)) for c in columns] for kind in kinds] for name, vals in sorted(cells.items())}
    return {"columns": columns, "kinds": kinds, "params": params}


def _put(cells: dict, name: str, at: tuple[str, str], v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return
    cells.setdefault(name, {})[at] = float(v)


def last_times(log: BuildLog, target: str) -> dict[str, Any]:
    """Per-tensor records of the latest logged run that computed or fetched ``target``'s tensors."""
    for run_id in reversed(log.runs()):
        rows = [r for r in log.read(run_id) if r.get("target") == target and r.get("tensor")]
        if rows:
            rows.sort(key=lambda r: -float(r.get("seconds") or 0.0))
            return {
                "run_id": run_id,
                "total": len(rows),
                "tensors": [
                    {"tensor": r["tensor"], "status": r.get("status"), "seconds": r.get("seconds")}
                    for r in rows[:MAX_TIMES]
                ],
            }
    return {"run_id": None, "total": 0, "tensors": []}


def target_view(session: RecipeSession, name: str) -> dict[str, Any]:
    """Everything the target page shows: recipe text, explanation, heat map, last build's times."""
    from mergefile.cli.render import dry_run_lines, explain_lines
    from mergefile.plan.graph import normalize_name
    from mergefile.run.build import BuildOptions, TargetReport, plan_build
    from mergefile.syntax.ast import Mergefile
    from mergefile.syntax.render_mergefile import render_mergefile
    from mergefile.ui.session import target_note

    mf = session.load()
    rules = mf.targets()
    name = normalize_name(name)
    if name not in rules:
        raise unknown("target", name, rules)
    with session.store() as store:
        rows = plan_build(mf, [name], store, BuildOptions(dry_run=True, allow_pickle=session.allow_pickle))
        plan, _, st, _ = next(row for row in rows if row[0].name == name)
        times = last_times(store.log, name)
    report = TargetReport(name, st)
    state, note = target_note(st)
    return {
        "name": name,
        "method": plan.method.name,
        "out_dir": str(plan.out_dir),
        "state": state,
        "note": note,
        "text": render_mergefile(Mergefile(mf.path, (rules[name],))),
        "line": rules[name].loc.line if rules[name].loc else None,
        "explain": explain_lines(report, verbose=True) + dry_run_lines(report),
        "inputs": [m.label for m in plan.inputs],
        "tensors": len(plan.jobs),
        "heat": heat_map(plan),
        "times": times,
    }


def cache_view(session: RecipeSession, last: int = 30) -> dict[str, Any]:
    """``cache stats``, the per-build history, entries by kind and a ``gc`` preview."""
    from mergefile.errors import UserError
    from mergefile.run.history import recent, totals
    from mergefile.run.usage import current_usage

    with session.store() as store:
        runs = recent(store.log, last)
        t = totals(runs)
        blobs = store.blobs
        keys = list(blobs.keys())
        sizes = {k: (info[2] if (info := blobs.info(k)) else 0) for k in keys}
        try:
            used, _ = current_usage(session.load(), store, session.allow_pickle)
            gc_error = None
        except UserError as e:
            used, gc_error = None, e.render()
        by_kind: dict[str, dict[str, int]] = {}
        for k in keys:
            use = used.get(k) if used is not None else None
            kind = "unknown" if used is None else ("unused" if use is None else use.kind.split(":")[0])
            row = by_kind.setdefault(kind, {"entries": 0, "bytes": 0})
            row["entries"] += 1
            row["bytes"] += sizes[k]
        data = {
            "cache_dir": str(store.root),
            "entries": len(keys),
            "volume_bytes": blobs.volume(),
            "size_limit_bytes": blobs.size_limit,
            "totals": t.to_json(),
            "by_kind": by_kind,
            "runs": [r.to_json() for r in runs],
        }
    unused = by_kind.get("unused", {"entries": 0, "bytes": 0})
    data["gc_preview"] = {"error": gc_error, "would_drop": unused["entries"], "would_drop_bytes": unused["bytes"]}
    return data


def log_records(session: RecipeSession, spec: str | None) -> dict[str, Any]:
    """One logged run's records (``mergebuild log RUN``: an id, a prefix, ``-N`` or the last)."""
    from mergefile.run.history import find_run, summarize

    with session.store() as store:
        run_id = find_run(store.log, spec)
        records = store.log.read(run_id)
    return {"run_id": run_id, "summary": summarize(run_id, records).to_json(), "records": records[:2000]}
