"""Helpers of the ``mergebuild ui`` tests: the demo recipe copied, a JSON client, a search folder."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def copy_demo(folder: Path, models: Path) -> Path:
    """recipes/demo's Mergefile in ``folder``, its models linked in; returns the Mergefile."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "recipes" / "demo" / "Mergefile", folder / "Mergefile")
    (folder / "models").symlink_to(models, target_is_directory=True)
    return folder / "Mergefile"


class Client:
    """Minimal JSON client: (status, parsed body); the token is sent only when asked."""

    def __init__(self, srv):  # a mergefile.ui.server.UiServer
        self.srv = srv
        self.base = f"http://127.0.0.1:{srv.port}"

    def request(
        self, path: str, body: dict | None = None, headers: dict | None = None, token: str | None = "header"
    ) -> tuple[int, object]:
        h = dict(headers or {})
        if token == "header":
            h["x-mergebuild-token"] = self.srv.token
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            h["content-type"] = "application/json"
        req = urllib.request.Request(self.base + path, data=data, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                raw, code = r.read(), r.status
        except urllib.error.HTTPError as e:
            raw, code = e.read(), e.code
        try:
            return code, json.loads(raw)
        except ValueError:
            return code, raw


def write_search(folder: Path, scores: list[float]) -> None:
    """An evolve storage folder as the search writes it: history lines, best.json, best.mf."""
    from mergefile.targets.evolve.outputs import append_history, read_history, write_text

    folder.mkdir(parents=True, exist_ok=True)
    history = read_history(folder / "history.jsonl")
    best = max(history, key=lambda h: h["score"]) if history else None
    for i, score in enumerate(scores, start=len(history)):
        line = {
            "n": i + 1,
            "generation": i // 2,
            "member": i % 2,
            "score": score,
            "results": {"t": {"acc,none": score}},
            "params": {"math.weight": [0.1 * i, 0.5], "code.weight": [0.5, 1 - 0.1 * i]},
            "key": f"k{i}",
        }
        append_history(folder / "history.jsonl", line)
        if best is None or score > best["score"]:
            best = line
            write_text(folder / "best.json", json.dumps(best))
            genes = best["params"]
            write_text(
                folder / "best.mf",
                f"# evaluation {best['n']}: score {score}\n"
                'model math = "models/math"\nmodel code = "models/code"\n\nfinal_model: linear {\n'
                f"    math weight={genes['math.weight']}\n    code weight={genes['code.weight']}\n}}\n",
            )
