"""``UiServer``: the page's server on a loopback socket, with a fresh token per start.

The socket is bound before uvicorn starts, so the URL (port included) is known and printed
first, and ``--port 0`` picks a free port.
"""

from __future__ import annotations

import secrets
import socket
import threading

from mergefile.errors import UserError
from mergefile.ui.app import UiApp
from mergefile.ui.builds import BuildManager
from mergefile.ui.session import RecipeSession

LOOPBACK = "127.0.0.1"


class UiServer:
    """Serve one recipe session on ``host:port`` (0: any free port).

    Example:
        >>> server = UiServer(session, port=0)  # doctest: +SKIP
        >>> print(server.url); server.serve()   # doctest: +SKIP
    """

    def __init__(
        self, session: RecipeSession, host: str = LOOPBACK, port: int = 0, jobs: int = 1, token: str | None = None
    ):
        self.session = session
        self.token = token or secrets.token_urlsafe(24)
        self.manager = BuildManager(session, jobs)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as e:
            self.sock.close()
            raise UserError(f"cannot listen on {host}:{port}: {e.strerror}", hint="choose another --port") from None
        self.sock.listen(64)
        self.host, self.port = self.sock.getsockname()[:2]
        self.routes = UiApp(session, self.manager, self.token, self.port)
        self.app = self.routes.starlette()
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The page's address, token included (what the user opens)."""
        return f"http://{self.host}:{self.port}/?token={self.token}"

    def _uvicorn(self):
        import uvicorn

        config = uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=2, lifespan="off")
        self._server = uvicorn.Server(config)
        return self._server

    def serve(self) -> None:
        """Serve until interrupted (Ctrl-C)."""
        try:
            self._uvicorn().run(sockets=[self.sock])
        finally:
            self.routes.stopping.set()

    def start(self) -> UiServer:
        """Serve from a background thread (tests, notebooks); returns once it accepts requests."""
        server = self._uvicorn()
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [self.sock]}, name="mergebuild-ui", daemon=True
        )
        self._thread.start()
        while not server.started and self._thread.is_alive():
            self._thread.join(0.01)
        return self

    def stop(self) -> None:
        self.routes.stopping.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.sock.close()
