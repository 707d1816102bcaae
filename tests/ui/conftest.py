"""Fixtures of the ``mergebuild ui`` tests: a fresh copy of the demo recipe and a running server."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="mergebuild ui needs the ui extra (starlette, uvicorn)")
pytest.importorskip("uvicorn", reason="mergebuild ui needs the ui extra (starlette, uvicorn)")

from mergefile.demo import make_demo  # noqa: E402
from mergefile.ui.server import UiServer  # noqa: E402
from mergefile.ui.session import RecipeSession  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's four tiny models, generated once (seeded: the same bytes as scripts/setup's)."""
    models = tmp_path_factory.mktemp("ui-demo-models") / "models"
    make_demo(models)
    return models


def copy_demo(folder: Path, models: Path) -> Path:
    """recipes/demo's Mergefile in ``folder``, its models linked in; returns the Mergefile."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "recipes" / "demo" / "Mergefile", folder / "Mergefile")
    (folder / "models").symlink_to(models, target_is_directory=True)
    return folder / "Mergefile"


@pytest.fixture
def demo(tmp_path: Path, demo_models: Path) -> Path:
    """A fresh demo recipe folder (nothing built, empty cache)."""
    return copy_demo(tmp_path / "demo", demo_models).parent


@pytest.fixture
def server(demo: Path):
    """A UI server on the demo recipe, on a free loopback port."""
    srv = UiServer(RecipeSession(demo / "Mergefile", demo / "cache")).start()
    yield srv
    srv.stop()


class Client:
    """Minimal JSON client: (status, parsed body); the token is sent only when asked."""

    def __init__(self, srv: UiServer):
        self.srv = srv
        self.base = f"http://127.0.0.1:{srv.port}"

    def request(self, path: str, body: dict | None = None, headers: dict | None = None,
                token: str | None = "header") -> tuple[int, object]:
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


@pytest.fixture
def client(server) -> Client:
    return Client(server)
