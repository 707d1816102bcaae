"""Fixtures of the ``mergebuild ui`` tests: a fresh copy of the demo recipe and a running server."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="mergebuild ui needs the ui extra (starlette, uvicorn)")
pytest.importorskip("uvicorn", reason="mergebuild ui needs the ui extra (starlette, uvicorn)")

from mergefile.demo import make_demo  # noqa: E402
from mergefile.ui.server import UiServer  # noqa: E402
from mergefile.ui.session import RecipeSession  # noqa: E402
from tests.ui.ui_support import Client, copy_demo  # noqa: E402


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's four tiny models, generated once (seeded: the same bytes as scripts/setup's)."""
    models = tmp_path_factory.mktemp("ui-demo-models") / "models"
    make_demo(models)
    return models


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


@pytest.fixture
def client(server) -> Client:
    return Client(server)
