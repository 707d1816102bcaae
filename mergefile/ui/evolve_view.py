"""The evolve view: a search's score curve, best recipe and genes, read from its storage folder.

A search (``mergebuild evolve --storage-path DIR``, or an ``evolve(...)`` target, whose state
lives in ``<cache>/evolve/<target>-<id>/``) writes ``history.jsonl`` one line per evaluation,
``best.json`` and ``best.mf`` as it goes (``targets/evolve/search.py``); the page reads them
with the search's own reader, so a running search shows up live.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergefile.errors import UserError

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from mergefile.ui.session import RecipeSession

HISTORY = "history.jsonl"


def evolve_folders(session: RecipeSession) -> list[Path]:
    """Search folders the page may show: the ones given with ``--evolve``, then the cache's."""
    found = [Path(p) for p in session.evolve_dirs]
    root = session.cache_dir / "evolve"
    if root.is_dir():
        found += sorted(p for p in root.iterdir() if (p / HISTORY).is_file())
    return list(dict.fromkeys(p.resolve() for p in found))


def evolve_stamps(session: RecipeSession) -> dict[str, int]:
    """Folder -> size of its history (the live stream notices a new evaluation by it)."""
    out = {}
    for p in evolve_folders(session):
        try:
            out[str(p)] = os.stat(p / HISTORY).st_size
        except OSError:
            out[str(p)] = 0
    return out


def evolve_view(session: RecipeSession, folder: str | None) -> dict[str, Any]:
    """The score curve (each evaluation and the best so far), the best recipe and its genes.

    Raises:
        UserError: ``folder`` is not one of :func:`evolve_folders` (nothing else is readable).
    """
    from mergefile.targets.evolve.outputs import read_history

    folders = evolve_folders(session)
    if not folders:
        return {"folders": [], "folder": None}
    chosen = folders[-1] if not folder else Path(folder).resolve()
    if chosen not in folders:
        raise UserError(
            f"'{folder}' is not an evolve folder of this recipe", hint="pass it with mergebuild ui --evolve DIR"
        )
    history = read_history(chosen / HISTORY)
    curve, best = [], None
    for line in history:
        score = line.get("score")
        if isinstance(score, (int, float)) and (best is None or score > best["score"]):
            best = line
        curve.append(
            {
                "n": line.get("n"),
                "generation": line.get("generation"),
                "score": score,
                "best": best["score"] if best else None,
                "error": line.get("error"),
            }
        )
    best = _best_json(chosen) or best  # the search's own pick (ties go to the earliest candidate)
    best_mf = chosen / "best.mf"
    return {
        "folders": [str(p) for p in folders],
        "folder": str(chosen),
        "evaluations": len(history),
        "curve": curve,
        "best": None
        if best is None
        else {
            "n": best.get("n"),
            "score": best["score"],
            "results": best.get("results"),
            "genes": best.get("params") or {},
        },
        "best_recipe": best_mf.read_text(encoding="utf-8") if best_mf.is_file() else None,
    }


def _best_json(folder: Path) -> dict[str, Any] | None:
    try:
        best = json.loads((folder / "best.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return best if isinstance(best, dict) and isinstance(best.get("score"), (int, float)) else None
