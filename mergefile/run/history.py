"""Build history from the per-run logs: one summary per run, and totals over the last runs.

``mergebuild log`` lists the summaries (like reading ``.ninja_log``), ``cache stats`` adds them
up into a hit rate and the bytes the cache saved. Records are the JSON lines ``run/build.py``
writes: a start line, one line per tensor (``computed``/``hit``/``recomputed``), one per
up-to-date target, and a closing summary (absent when the run was killed).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

NODE_STATUSES = {"computed": "computed", "hit": "hits", "recomputed": "recomputed"}  # status -> counter


@dataclass
class RunSummary:
    """What one run did, read back from its log."""

    run_id: str
    argv: list[str] = field(default_factory=list)
    start: float | None = None
    end: float | None = None
    targets: list[str] = field(default_factory=list)
    up_to_date: list[str] = field(default_factory=list)
    computed: int = 0
    hits: int = 0
    recomputed: int = 0
    stage_hits: int = 0
    stage_misses: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    bytes_saved: int = 0
    finished: bool = False
    error: str | None = None

    @property
    def seconds(self) -> float | None:
        return None if self.start is None or self.end is None else max(0.0, self.end - self.start)

    @property
    def hit_rate(self) -> float | None:
        """Share of the tensors a run needed that came from the cache (None if it needed none)."""
        total = self.hits + self.computed + self.recomputed
        return None if total == 0 else self.hits / total

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": self.seconds, "hit_rate": self.hit_rate}


def summarize(run_id: str, records: Sequence[dict[str, Any]]) -> RunSummary:
    """Fold one run's records into a summary; tolerant of killed runs (no summary line)."""
    s = RunSummary(run_id)
    seen_targets: dict[str, None] = {}
    for rec in records:
        t = rec.get("time")
        if rec.get("start"):
            s.argv = list(rec.get("argv", []))
            s.start = t
            continue
        if isinstance(t, (int, float)):
            s.end = t if s.end is None else max(s.end, t)
        if rec.get("summary"):
            s.finished = True
            s.error = rec.get("error")
            continue
        target = rec.get("target")
        if target:
            seen_targets.setdefault(target, None)
        status = rec.get("status")
        if status == "up-to-date" and target:
            s.up_to_date.append(target)
        if status not in NODE_STATUSES:
            continue
        attr = NODE_STATUSES[status]
        setattr(s, attr, getattr(s, attr) + 1)
        s.stage_hits += int(rec.get("stage_hits", 0))
        s.stage_misses += int(rec.get("stage_misses", 0))
        s.bytes_read += int(rec.get("bytes_read", 0))
        s.bytes_written += int(rec.get("bytes_written", 0))
        s.bytes_saved += int(rec.get("bytes_saved", 0))
    s.targets = list(seen_targets)
    return s


@dataclass
class Totals:
    """Sums over several runs (``cache stats``)."""

    runs: int = 0
    computed: int = 0
    hits: int = 0
    recomputed: int = 0
    up_to_date_targets: int = 0
    bytes_read: int = 0
    bytes_saved: int = 0

    @property
    def hit_rate(self) -> float | None:
        total = self.hits + self.computed + self.recomputed
        return None if total == 0 else self.hits / total

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "hit_rate": self.hit_rate}


def totals(summaries: Iterable[RunSummary]) -> Totals:
    out = Totals()
    for s in summaries:
        out.runs += 1
        out.computed += s.computed
        out.hits += s.hits
        out.recomputed += s.recomputed
        out.up_to_date_targets += len(s.up_to_date)
        out.bytes_read += s.bytes_read
        out.bytes_saved += s.bytes_saved
    return out


def recent(log, last: int) -> list[RunSummary]:
    """Summaries of the last ``last`` runs of a :class:`~mergefile.store.log.BuildLog`, oldest first."""
    runs = log.runs()[-last:] if last > 0 else log.runs()
    return [summarize(r, log.read(r)) for r in runs]


def find_run(log, spec: str | None) -> str:
    """A run id from a user's spelling: ``last``/None, ``-N`` (N-th from last), an id or a unique prefix.

    Raises:
        UserError: no run matches, or a prefix matches several.
    """
    from mergefile.errors import UserError

    runs = log.runs()
    if not runs:
        raise UserError(f"no builds logged yet in {log.directory}")
    if spec in (None, "", "last"):
        return runs[-1]
    if spec.lstrip("-").isdigit() and spec.startswith("-"):
        n = int(spec[1:])
        if not 1 <= n <= len(runs):
            raise UserError(f"run {spec} does not exist: {len(runs)} run(s) are logged")
        return runs[-n]
    if spec in runs:
        return spec
    hits = [r for r in runs if r.startswith(spec)]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise UserError(f"run '{spec}' is ambiguous: {', '.join(hits[:5])}" + (" …" if len(hits) > 5 else ""))
    raise UserError(f"no logged run '{spec}'", hint="`mergebuild log` lists the runs")
