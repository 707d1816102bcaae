"""Build log, like ``.ninja_log``: one JSON line per node per run.

Each run appends to its own ``<dir>/<run_id>.jsonl`` (run id = UTC timestamp + pid, so names
sort oldest first and concurrent runs never share a file). Lines are written with one
``write`` on an ``O_APPEND`` descriptor and flushed as they happen, so a crash loses at most
the line being written; readers skip a torn last line.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence

_SUFFIX = ".jsonl"


def _new_run_id() -> str:
    now = time.time_ns()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 10**9))
    return f"{stamp}.{now // 1000 % 10**6:06d}Z-{os.getpid()}"


class RunLog:
    """The log of one run; ``record`` is safe to call from many threads."""

    def __init__(self, path: str | os.PathLike, run_id: str, argv: Sequence[str]):
        self.run_id = run_id
        self.path = path
        self._lock = threading.Lock()
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self._write({"run_id": run_id, "start": True, "argv": list(argv), "pid": os.getpid(), "time": time.time()})

    def record(self, **fields: object) -> None:
        """Append one record, e.g. ``record(target=..., tensor=..., key=..., status="hit")``."""
        fields.setdefault("time", time.time())
        self._write(fields)

    def close(self, **summary: object) -> None:
        """Write the final ``{"summary": true, ...}`` line and close the file (idempotent)."""
        if self._fd is None:
            return
        self._write({"summary": True, "time": time.time(), **summary})
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _write(self, obj: dict[str, object]) -> None:
        line = (json.dumps(obj, separators=(",", ":"), default=str) + "\n").encode()
        with self._lock:
            if self._fd is None:
                raise ValueError(f"run log {self.run_id} is closed")
            os.write(self._fd, line)

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(**({"error": repr(exc[1])} if exc[1] is not None else {}))


class BuildLog:
    """All runs' logs in one folder."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)
        os.makedirs(self.directory, exist_ok=True)

    def start_run(self, argv: Sequence[str]) -> RunLog:
        """Open the log of a new run."""
        while True:
            run_id = _new_run_id()
            try:
                return RunLog(os.path.join(self.directory, f"{run_id}{_SUFFIX}"), run_id, argv)
            except FileExistsError:  # same microsecond, same pid: take the next one
                time.sleep(1e-6)

    def runs(self) -> list[str]:
        """Run ids, oldest first."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(n[: -len(_SUFFIX)] for n in names if n.endswith(_SUFFIX) and not n.startswith("."))

    def read(self, run_id: str | None = None) -> list[dict[str, object]]:
        """Records of a run (default: the last), start line and summary included."""
        if run_id is None:
            runs = self.runs()
            if not runs:
                return []
            run_id = runs[-1]
        records = []
        with open(os.path.join(self.directory, f"{run_id}{_SUFFIX}"), encoding="utf-8") as fh:
            for line in fh:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # torn line from a crash
        return records

    def prune(self, keep: int = 50) -> list[str]:
        """Delete all but the last ``keep`` runs; returns the run ids deleted."""
        runs = self.runs()
        gone = runs[: max(len(runs) - keep, 0)]
        for run_id in gone:
            try:
                os.unlink(os.path.join(self.directory, f"{run_id}{_SUFFIX}"))
            except FileNotFoundError:
                pass
        return gone
