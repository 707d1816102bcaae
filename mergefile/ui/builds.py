"""Builds started from the page, and builds seen from outside it, as one live picture.

A page build is :func:`mergefile.run.build.build` in a thread, with the CLI's options, store,
locks and log: nothing about building is re-implemented. Two builds of one output never run at
once because ``build`` takes the output's ``flock`` (``store/lock.py``) without waiting, as
``mergebuild --no-wait`` does, and the request is refused before it starts when the lock is
already held (by a terminal, or by this page). A build started from a terminal shows up through
the same two files any observer can read: the holder's pid in the lock file, and the run's
JSON-lines build log (``store/log.py``), which grows one line per tensor.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergefile.errors import LockedError, UserError
from mergefile.run.build import Progress

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from mergefile.syntax.ast import Mergefile
    from mergefile.ui.session import RecipeSession


class BuildCancelled(UserError):
    """The page asked the build to stop."""


@dataclass
class PageBuild:
    """One build started from the page: its per-target progress and its outcome."""

    id: int
    target: str
    needs: frozenset[str] = frozenset()  # the targets this build may write (the target and its prerequisites)
    state: str = "running"  # running | done | failed | cancelled
    started: float = field(default_factory=time.time)
    ended: float | None = None
    progress: dict[str, dict[str, int]] = field(default_factory=dict)  # target -> done/total/bytes
    messages: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # the CLI's closing line per target
    error: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "target": self.target,
            "state": self.state,
            "started": self.started,
            "ended": self.ended,
            "progress": self.progress,
            "messages": self.messages[-20:],
            "lines": self.lines,
            "error": self.error,
        }


class PageProgress(Progress):
    """What ``build`` reports, kept for the page; a cancel request stops at the next tensor."""

    def __init__(self, job: PageBuild, lock: threading.Lock):
        self.job, self.lock = job, lock

    def start_target(self, name: str, total: int) -> None:
        with self.lock:
            self.job.progress[name] = {"done": 0, "total": total, "bytes": 0}

    def advance(self, name: str, n: int = 1, nbytes: int = 0) -> None:
        with self.lock:
            p = self.job.progress.setdefault(name, {"done": 0, "total": 0, "bytes": 0})
            p["done"] += n
            p["bytes"] += nbytes
        if self.job.cancel.is_set():  # raised inside the build's tensor loop: the output is left as it was
            raise BuildCancelled(f"build of {self.job.target} cancelled from the page")

    def message(self, text: str) -> None:
        with self.lock:
            self.job.messages.append(text)


def lock_holder(out_dir: str | Path) -> int | None:
    """The pid building ``out_dir`` now, read from its lock file (never taking the lock)."""
    from mergefile.store.lock import lock_path

    try:
        text = lock_path(out_dir).read_text(encoding="ascii", errors="replace").strip()
        pid = int(text) if text else None
    except (OSError, ValueError):
        return None
    return pid if pid is not None and pid_alive(pid) else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class BuildManager:
    """Starts, cancels and reports page builds of one :class:`~mergefile.ui.session.RecipeSession`."""

    def __init__(self, session: RecipeSession, jobs: int = 1):
        self.session = session
        self.jobs = max(1, jobs)
        self.builds: list[PageBuild] = []
        self.failed: dict[str, tuple[str, float]] = {}  # target -> (error, when) of its last page build
        self._lock = threading.Lock()

    def start(self, target: str) -> PageBuild:
        """Build ``target`` (and what it needs) from the saved recipe, in the background.

        Raises:
            LockedError: the target, or one it needs, is being built (here or by another process).
            UserError: the saved recipe does not parse, or names no such target.
        """
        from mergefile.errors import unknown
        from mergefile.plan.graph import build_graph, normalize_name

        mf = self.session.load()
        rules = mf.targets()
        name = normalize_name(target)
        if name not in rules:
            raise unknown("target", target, rules)
        import networkx as nx

        needed = {n for n in nx.ancestors(build_graph(mf), name) | {name} if n in rules}  # targets and groups
        with self._lock:
            for b in self.builds:
                if b.state == "running" and b.needs & needed:
                    raise LockedError(
                        f"{b.target} is being built from this page (build {b.id})",
                        hint="wait for it to finish, or cancel it",
                    )
            for dep, out_dir in self.session.out_dirs.items():
                pid = lock_holder(out_dir) if dep in needed else None
                if pid is not None:
                    raise LockedError(
                        f"{out_dir} is being built by another mergebuild (pid {pid})",
                        hint="wait for it to finish, or build another target",
                    )
            job = PageBuild(len(self.builds) + 1, name, needs=frozenset(needed))
            self.builds.append(job)
        threading.Thread(target=self._run, args=(job, mf), name=f"mergebuild-ui-build-{job.id}", daemon=True).start()
        return job

    def _run(self, job: PageBuild, mf: Mergefile) -> None:
        from mergefile.cli.render import build_line
        from mergefile.run.build import BuildOptions, build, default_memory_budget

        options = BuildOptions(
            jobs=self.jobs,
            memory_budget=default_memory_budget(),
            allow_pickle=self.session.allow_pickle,
            wait_for_lock=False,
        )
        state, error, lines = "done", None, []
        try:
            with self.session.store() as store:
                report = build(mf, [job.target], store, options, PageProgress(job, self._lock), ["ui", job.target])
            lines = [build_line(r) for r in report.targets]
        except BuildCancelled as e:
            state, error = "cancelled", e.render()
        except UserError as e:
            state, error = "failed", f"mergebuild: error: {e.render()}"
        except Exception as e:  # an internal error: shown on the page, not swallowed silently
            state, error = "failed", f"{type(e).__name__}: {e}"
        with self._lock:
            job.state, job.error, job.lines, job.ended = state, error, lines, time.time()
            if state == "failed":
                self.failed[job.target] = (error or "failed", job.ended)
            elif state == "done":
                self.failed.pop(job.target, None)

    def cancel(self, build_id: int) -> PageBuild:
        """Ask a running build to stop (it stops after the tensor in progress)."""
        job = self.get(build_id)
        job.cancel.set()
        return job

    def get(self, build_id: int) -> PageBuild:
        with self._lock:
            for b in self.builds:
                if b.id == build_id:
                    return b
        raise UserError(f"no build {build_id} was started from this page")

    def wait(self, build_id: int, timeout: float = 60.0) -> PageBuild:
        """Block until a build ends (for tests and scripts)."""
        deadline = time.monotonic() + timeout
        job = self.get(build_id)
        while job.state == "running" and time.monotonic() < deadline:
            time.sleep(0.02)
        return job

    def snapshot(self) -> dict[str, Any]:
        """Page builds, every target's lock holder, the runs other processes are logging, and the
        size of each evolve history (a new evaluation changes it)."""
        latest = self.logged_outcomes()
        with self._lock:
            builds = [b.to_json() for b in self.builds[-10:]]
            for target, (error, when) in self.failed.items():  # a page build may fail before it logs
                if when >= latest.get(target, (None, 0.0))[1]:
                    latest[target] = (error, when)
        failed = {t: why for t, (why, _) in latest.items() if why is not None}
        holders = {t: pid for t, d in self.session.out_dirs.items() if (pid := lock_holder(d)) is not None}
        from mergefile.ui.evolve_view import evolve_stamps

        return {
            "builds": builds,
            "building": holders,
            "failed": failed,
            "runs": self.live_runs(),
            "evolve": evolve_stamps(self.session),
        }

    def logged_outcomes(self, last: int = 20) -> dict[str, tuple[str | None, float]]:
        """Target -> (the error of its latest logged build, or None when it built; when), from
        the last ``last`` runs in the cache's log: a terminal's builds as well as this page's."""
        from mergefile.store.log import BuildLog

        log = BuildLog(self.session.cache_dir / "logs")
        state: dict[str, tuple[str | None, float]] = {}
        for run_id in log.runs()[-last:]:
            summary = next((r for r in log.read(run_id) if r.get("summary")), None)
            if summary is None:
                continue
            when = float(summary.get("time") or 0.0)
            failed = summary.get("failed") or {}
            if failed:  # the others of a failed run may not have been tried: left as they were
                state.update({str(t): (str(why), when) for t, why in failed.items()})
            else:
                state.update({str(t): (None, when) for t in summary.get("targets") or ()})
        return state

    def live_runs(self) -> list[dict[str, Any]]:
        """Runs still logging (no summary line yet, their process alive): per-target tensor counts."""
        from mergefile.store.log import BuildLog

        log = BuildLog(self.session.cache_dir / "logs")
        out = []
        for run_id in log.runs()[-5:]:
            records = log.read(run_id)
            if not records or any(r.get("summary") for r in records):
                continue
            pid = records[0].get("pid")
            if not isinstance(pid, int) or not pid_alive(pid):
                continue
            counts: dict[str, int] = {}
            for r in records:
                if r.get("status") in ("computed", "hit", "recomputed") and r.get("target"):
                    counts[r["target"]] = counts.get(r["target"], 0) + 1
            out.append(
                {
                    "run_id": run_id,
                    "pid": pid,
                    "argv": records[0].get("argv", []),
                    "page": pid == os.getpid() and records[0].get("argv", [None])[:1] == ["ui"],
                    "tensors": counts,
                }
            )
        return out
