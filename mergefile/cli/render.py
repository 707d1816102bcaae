"""Human and JSON renderings of build reports: the words users read after a build or -n."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from mergefile.cli.noop import up_to_date_line  # noqa: F401 - shared with the no-op answers

if TYPE_CHECKING:  # pragma: no cover - the stamped no-op renders without importing the build
    from mergefile.run.build import BuildReport, TargetReport


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def explain_lines(r: TargetReport, verbose: bool = False, limit: int = 4) -> list[str]:
    """Stale tensors grouped by reason and identical details, most common first."""
    st = r.status
    if st.up_to_date:
        return [f"{r.name}: up to date"]
    total = len(st.kp.plan.jobs)
    shards = len(st.write_shards) + len(st.reuse_shards)
    lines = [f"{r.name}: {len(st.stale)} of {total} tensors stale, {len(st.write_shards)} of {shards} shards to write"]
    groups: dict[tuple[str, tuple[str, ...]], list[str]] = defaultdict(list)
    for s in st.stale.values():
        groups[(s.reason.value, s.details)].append(s.tensor)
    for (reason, details), names in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        what = "; ".join(details) if details else ""
        lines.append(f"  {reason}{': ' + what if what else ''} — {len(names)} tensor{'s' if len(names) != 1 else ''}")
        shown = names if verbose else names[:limit]
        for n in shown:
            lines.append(f"      {n}")
        if len(names) > len(shown):
            lines.append(f"      … and {len(names) - len(shown)} more (-v shows all)")
    if st.removed:
        lines.append(f"  tensors no longer produced — {len(st.removed)}")
    if st.aux_stale and not st.stale:
        lines.append("  config / tokenizer files changed")
    return lines


def dry_run_lines(r: TargetReport) -> list[str]:
    if r.status.up_to_date:
        return []
    return [
        f"  would compute {len(r.to_compute)} tensors (the rest come from the cache), "
        f"read ~{human_bytes(r.est_read)}, write ~{human_bytes(r.est_write)}, peak memory ~{human_bytes(r.est_peak)}"
    ]


def build_line(r: TargetReport) -> str:
    if not r.built:
        return up_to_date_line(r.name)
    st = r.status
    copied = f", {r.from_output} from the previous output" if r.from_output else ""
    return (
        f"{r.name}: built — {r.computed} computed, {r.cache_hits} from cache{copied}, "
        f"{len(st.write_shards)} shard(s) written, {len(st.reuse_shards)} kept; "
        f"read {human_bytes(r.bytes_read)}, wrote {human_bytes(r.bytes_written)} in {r.seconds:.2f}s"
    )


def report_json(report: BuildReport, dry_run: bool) -> str:
    out: list[dict[str, Any]] = []
    for r in report.targets:
        st = r.status
        out.append(
            {
                "target": r.name,
                "up_to_date": st.up_to_date,
                "built": r.built,
                "stale": [
                    {"tensor": s.tensor, "reason": s.reason.name.lower(), "details": list(s.details)}
                    for s in st.stale.values()
                ],
                "removed": st.removed,
                "shards_write": sorted(st.write_shards),
                "shards_reuse": sorted(st.reuse_shards),
                "to_compute": r.to_compute,
                "estimate": {"read_bytes": r.est_read, "write_bytes": r.est_write, "peak_bytes": r.est_peak},
                "computed": r.computed,
                "cache_hits": r.cache_hits,
                "from_output": r.from_output,
                "stage_hits": r.stage_hits,
                "stage_misses": r.stage_misses,
                "bytes_read": r.bytes_read,
                "bytes_written": r.bytes_written,
                "seconds": round(r.seconds, 4),
            }
        )
    return json.dumps({"dry_run": dry_run, "up_to_date": report.up_to_date, "targets": out}, indent=2)
