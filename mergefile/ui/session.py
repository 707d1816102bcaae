"""The recipe a ``mergebuild ui`` page looks at: parse, plan and explain it as the CLI does.

Every answer comes from the library functions ``mergebuild -n --explain`` runs: a draft is
parsed by :func:`mergefile.syntax.parse_text` (or the mergekit YAML reader), planned and
compared by :func:`mergefile.run.build.build` with ``dry_run=True``, and explained by
:func:`mergefile.cli.render.explain_lines`. Nothing here reads tensor data.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergefile.errors import UserError

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from mergefile.run.build import BuildReport
    from mergefile.syntax.ast import Mergefile


@dataclass
class RecipeSession:
    """One recipe file (a Mergefile, or a mergekit YAML as one target) and its cache.

    Args:
        path: the recipe file, absolute.
        cache_dir: the cache folder, absolute (the CLI's ``--cache-dir`` rule, resolved once).
        config_target: with a mergekit YAML, the output folder it builds (``--config`` TARGET).
    """

    path: Path
    cache_dir: Path
    config_target: str | None = None
    cache_size: int | None = None
    allow_pickle: bool = False
    lenient: bool = False
    evolve_dirs: list[Path] = field(default_factory=list)  # search storage folders (mergebuild ui --evolve)
    base_dir: Path | None = None  # with a YAML: where outputs go, as the CLI's cwd (default: the YAML's folder)
    out_dirs: dict[str, Path] = field(default_factory=dict)  # target -> folder, from the last plan
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def folder(self) -> Path:
        return self.path.parent

    def read_text(self) -> str:
        return self.path.read_text(encoding="utf-8-sig")

    def save(self, text: str) -> None:
        """Write the recipe file (through a temp file and a rename: never half written)."""
        tmp = self.path.with_name(f".{self.path.name}.mergebuild-ui-{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.path)

    @contextmanager
    def store(self) -> Iterator[Any]:
        """The CLI's store over this session's cache (opened per use: SQLite is process-safe)."""
        from mergefile.store.store import DEFAULT_SIZE_LIMIT, Store

        with Store(self.cache_dir, self.cache_size or DEFAULT_SIZE_LIMIT) as store:
            yield store

    def load(self, text: str | None = None) -> Mergefile:
        """The recipe AST of ``text`` (default: the file on disk), as the CLI would parse it.

        Raises:
            UserError: the text does not parse; its ``loc`` says where.
        """
        if text is None:
            return self._load_file()
        if self.config_target is not None:
            from mergefile.syntax import yaml_text_to_targets

            return self._as_mergefile(
                yaml_text_to_targets(text, str(self.path), self.config_target, lenient=self.lenient)
            )
        return _parse_draft(text, self.path, self.lenient)

    def _load_file(self) -> Mergefile:
        """The saved recipe, read as ``mergebuild -f FILE`` / ``--config YAML TARGET`` read it."""
        if self.config_target is None:
            from mergefile.syntax import parse_mergefile

            return parse_mergefile(self.path, lenient=self.lenient)
        if not self.path.is_file():
            raise UserError(f"config file '{self.path}' not found")
        from mergefile.targets.moe_yaml import moe_yaml_to_target  # a mergekit-moe config (it has experts:)

        moe = moe_yaml_to_target(self.path, self.config_target)
        return self._as_mergefile((moe,)) if moe else self.load(self.read_text())

    def _as_mergefile(self, targets) -> Mergefile:
        """YAML targets as the CLI's one-file recipe: outputs relative to ``base_dir``."""
        from mergefile.syntax.ast import Mergefile

        return Mergefile(str((self.base_dir or self.folder) / "Mergefile"), tuple(targets))

    def plan_view(self, text: str | None = None) -> dict[str, Any]:
        """The page's picture of a draft: graph, per-target state and explanation, or the error."""
        try:
            mf = self.load(text)
            report = self._dry_run(mf)
        except UserError as e:
            return {"ok": False, "error": error_json(e, self.path)}
        with self._lock:
            self.out_dirs = {r.name: Path(r.status.kp.plan.out_dir) for r in report.targets}
        return {"ok": True, **graph_json(mf, report)}

    def _dry_run(self, mf: Mergefile) -> BuildReport:
        """``mergebuild -n --explain`` over every merge target: the same ``build`` call."""
        from mergefile.run.build import BuildOptions, build
        from mergefile.run.usage import all_targets

        with self.store() as store:
            return build(mf, all_targets(mf), store, BuildOptions(dry_run=True, allow_pickle=self.allow_pickle))


def _parse_draft(text: str, path: Path, lenient: bool) -> Mergefile:
    """Parse unsaved Mergefile text as if it were ``path``; its includes are read from disk
    by the parser's own functions (a Mergefile include, or ``include "x.yml" as out/x``)."""
    from mergefile.syntax import load_yaml_targets, parse_mergefile, parse_text
    from mergefile.syntax.ast import Include, Mergefile
    from mergefile.syntax.parser import check_definitions

    mf = parse_text(text, str(path))
    if not any(isinstance(st, Include) for st in mf.statements):
        return mf
    statements, files = [], [str(path)]
    for st in mf.statements:
        if not isinstance(st, Include):
            statements.append(st)
            continue
        included = os.path.normpath(os.path.join(path.parent, st.path))
        if not os.path.isfile(included):
            raise UserError(f"cannot read include file '{st.path}': no such file", st.loc)
        if st.as_target is not None:
            statements.extend(load_yaml_targets(included, st.as_target, lenient=lenient))
            files.append(included)
        else:
            inc = parse_mergefile(included, lenient=lenient)
            statements.extend(inc.statements)
            files.extend(inc.files or (inc.path,))
    check_definitions(statements)
    return Mergefile(str(path), tuple(statements), tuple(files))


def error_json(e: UserError, path: Path) -> dict[str, Any]:
    """A user error as the CLI prints it, with its line and column when it has them."""
    loc = e.loc
    return {
        "message": f"mergebuild: error: {e.render()}",
        "line": loc.line if loc else None,
        "column": loc.column if loc else None,
        "file": loc.file if loc else None,
        "in_this_file": bool(loc) and os.path.realpath(loc.file) == os.path.realpath(path),
    }


def target_note(st) -> tuple[str, str]:
    """(state, one-line why) of a compared target, worded like ``mergebuild graph``."""
    if st.up_to_date:
        return "fresh", "up to date"
    if not st.stale:
        return "stale", "stale: " + ("tensors removed" if st.removed else "config/tokenizer files changed")
    reason, _ = Counter(s.reason.value for s in st.stale.values()).most_common(1)[0]
    return "stale", f"stale: {len(st.stale)}/{len(st.kp.plan.jobs)} tensors ({reason})"


def graph_json(mf: Mergefile, report: BuildReport) -> dict[str, Any]:
    """Nodes and edges of models -> targets -> groups, with each target's state and explanation."""
    from mergefile.cli.render import dry_run_lines, explain_lines
    from mergefile.plan.graph import normalize_name
    from mergefile.syntax.ast import Phony

    models: dict[str, dict[str, Any]] = {}
    targets, edges = [], set()
    for r in report.targets:
        plan, st = r.status.kp.plan, r.status
        state, note = target_note(st)
        targets.append(
            {
                "id": f"target:{r.name}",
                "name": r.name,
                "method": plan.method.name,
                "tensors": len(plan.jobs),
                "state": state,
                "note": note,
                "stale": len(st.stale),
                "to_compute": len(r.to_compute),
                "explain": explain_lines(r) + dry_run_lines(r),
                "out_dir": str(plan.out_dir),
            }
        )
        bases = {job.inputs[job.base_index].model for job in plan.jobs if job.base_index is not None}
        for i, m in enumerate(plan.inputs):
            if m.target is not None:
                src = f"target:{m.target}"
            else:
                src = f"model:{m.path}"
                models.setdefault(
                    src, {"id": src, "name": m.label, "path": m.path, "hub": list(m.hub) if m.hub else None}
                )
            edges.add((src, f"target:{r.name}", "base" if i in bases else ""))
    groups = []
    rules = mf.targets()
    for name, rule in rules.items():
        if isinstance(rule, Phony):
            groups.append({"id": f"group:{name}", "name": name})
            for dep in rule.deps:
                dep = normalize_name(dep)
                kind = "group" if isinstance(rules.get(dep), Phony) else "target"
                edges.add((f"{kind}:{dep}", f"group:{name}", ""))
    return {
        "models": list(models.values()),
        "targets": targets,
        "groups": groups,
        "edges": [list(e) for e in sorted(edges)],
        "stale_targets": sum(t["state"] != "fresh" for t in targets),
        "stale_tensors": sum(t["stale"] for t in targets),
    }
