"""The output manifest: which key every tensor of an output folder was built from, and how.

It lives in the folder (``mergebuild.json``) so the folder describes itself: a rebuild compares
the new keys with it, and ``--explain`` diffs the recorded recipes to say what changed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "mergebuild.json"
FORMAT = 1


@dataclass
class Manifest:
    target: str
    tensors: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {key, shard, recipe}
    shards: dict[str, dict[str, Any]] = field(default_factory=dict)  # file -> {size, mtime_ns, ino}
    aux_key: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = {
            "format": FORMAT,
            "target": self.target,
            "aux_key": self.aux_key,
            "shards": self.shards,
            "tensors": self.tensors,
            **({"extra": self.extra} if self.extra else {}),
        }
        # compact: json's C encoder does not indent, and a manifest of a few thousand tensors
        # took 50 ms to write indented (a tenth of a one-layer edit); `jq .` reads it for people
        return json.dumps(data, sort_keys=True, separators=(",", ":"))


def read_manifest(out_dir: str | Path) -> Manifest | None:
    """The manifest of an output folder, or None when absent or unreadable (treated as stale)."""
    path = Path(out_dir) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("format") != FORMAT:
        return None
    return Manifest(
        target=data.get("target", ""),
        tensors=data.get("tensors", {}),
        shards=data.get("shards", {}),
        aux_key=data.get("aux_key"),
        extra=data.get("extra", {}),
    )


def shard_stat(path: str | Path) -> dict[str, int] | None:
    """What a shard looked like when written; a mismatch later means someone changed it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}
