"""The HTTP side of ``mergebuild ui``: a Starlette app, served by uvicorn on 127.0.0.1.

Safety, as Jupyter does it: a random token in the URL; the first page load turns it into a
``SameSite=Strict`` cookie, every other request must carry the token (query, header or cookie)
and anything that changes state must carry it in the ``X-Mergebuild-Token`` header (a form on
another site cannot set it). The Host header must name the loopback address (no DNS rebinding).
Nothing serves files by path: the page's own assets come from the package, and every answer is
JSON made from the recipe, its plan, its outputs' manifests, the cache and evolve folders.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
from importlib import resources
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from mergefile.errors import LockedError, UserError

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from mergefile.ui.builds import BuildManager
    from mergefile.ui.session import RecipeSession

STATIC = {name: "text/javascript" for name in ("util.js", "graph.js", "views.js", "app.js")} | {"style.css": "text/css"}
HEADER = "x-mergebuild-token"
EVENT_PERIOD_S = 0.25
KEEP_ALIVE_S = 15.0
FORBIDDEN = {"error": "forbidden: open the URL mergebuild ui printed (it carries the token)"}
# The page runs only its own scripts and styles, talks only to this server, and never sends the
# tokened URL anywhere as a referrer.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def asset(name: str) -> bytes:
    """One of the page's files, shipped inside the package (``mergefile/ui/static``)."""
    return resources.files("mergefile.ui").joinpath("static", name).read_bytes()


async def _body(request: Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError:
        raise UserError("the request body is not JSON") from None
    if not isinstance(data, dict):
        raise UserError("the request body must be a JSON object")
    return data


def _text(data: dict[str, Any]) -> str:
    text = data.get("text")
    if not isinstance(text, str):
        raise UserError("the request needs the recipe text")
    return text


class UiApp:
    """Routes of one recipe session; ``port`` names the cookie and the accepted Host."""

    def __init__(self, session: RecipeSession, manager: BuildManager, token: str, port: int):
        self.session, self.manager, self.token = session, manager, token
        self.cookie = f"mergebuild_ui_{port}"
        self.hosts = {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}
        self.stopping = threading.Event()  # set by UiServer.stop (another thread): event streams end

    def starlette(self) -> Starlette:
        reads = {
            "/": self.index,
            "/static/{name}": self.static,
            "/api/recipe": self.recipe,
            "/api/target": self.target,
            "/api/builds": self.builds,
            "/api/cache": self.cache,
            "/api/log": self.log,
            "/api/evolve": self.evolve,
            "/api/events": self.events,
        }
        writes = {"/api/plan": self.plan, "/api/save": self.save, "/api/build": self.build, "/api/cancel": self.cancel}
        routes = [Route(path, self._guard(h, False)) for path, h in reads.items()]
        routes += [Route(path, self._guard(h, True), methods=["POST"]) for path, h in writes.items()]
        return Starlette(routes=routes)

    def authorized(self, request: Request, write: bool) -> bool:
        """Loopback Host, and the token: in the header for writes, anywhere for reads."""
        if request.headers.get("host") not in self.hosts:
            return False
        h = request.headers.get(HEADER)
        given = h if write else (request.query_params.get("token") or h or request.cookies.get(self.cookie))
        return given is not None and hmac.compare_digest(given, self.token)

    def _guard(self, handler, write: bool):
        async def endpoint(request: Request) -> Response:
            if not self.authorized(request, write):
                return JSONResponse(FORBIDDEN, status_code=403)
            try:
                return await handler(request)
            except UserError as e:  # the CLI's message; a held lock is a conflict
                status = 409 if isinstance(e, LockedError) else 400
                return JSONResponse({"error": f"mergebuild: error: {e.render()}"}, status_code=status)

        return endpoint

    async def index(self, request: Request) -> Response:
        resp = Response(asset("index.html"), media_type="text/html", headers=PAGE_HEADERS)
        resp.set_cookie(self.cookie, self.token, httponly=True, samesite="strict")
        return resp

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return JSONResponse({"error": "not found"}, status_code=404)
        return Response(asset(name), media_type=STATIC[name], headers={"X-Content-Type-Options": "nosniff"})

    async def recipe(self, request: Request) -> Response:
        s = self.session
        text = await run_in_threadpool(s.read_text)
        view = await run_in_threadpool(s.plan_view)
        return JSONResponse({"path": str(s.path), "config": s.config_target is not None, "text": text, "view": view})

    async def plan(self, request: Request) -> Response:
        text = _text(await _body(request))
        return JSONResponse(await run_in_threadpool(self.session.plan_view, text))

    async def save(self, request: Request) -> Response:
        text = _text(await _body(request))
        await run_in_threadpool(self.session.save, text)
        return JSONResponse({"saved": str(self.session.path), "view": await run_in_threadpool(self.session.plan_view)})

    async def target(self, request: Request) -> Response:
        from mergefile.ui.views import target_view

        name = request.query_params.get("name", "")
        return JSONResponse(await run_in_threadpool(target_view, self.session, name))

    async def build(self, request: Request) -> Response:
        name = (await _body(request)).get("target")
        if not isinstance(name, str) or not name:
            raise UserError("a build request needs a target name")
        job = await run_in_threadpool(self.manager.start, name)
        return JSONResponse({"build": job.to_json()}, status_code=202)

    async def cancel(self, request: Request) -> Response:
        build_id = (await _body(request)).get("id")
        if not isinstance(build_id, int):
            raise UserError("a cancel request needs the build's id")
        return JSONResponse({"build": self.manager.cancel(build_id).to_json()})

    async def builds(self, request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(self.manager.snapshot))

    async def cache(self, request: Request) -> Response:
        from mergefile.ui.views import cache_view

        return JSONResponse(await run_in_threadpool(cache_view, self.session))

    async def log(self, request: Request) -> Response:
        from mergefile.ui.views import log_records

        return JSONResponse(await run_in_threadpool(log_records, self.session, request.query_params.get("run")))

    async def evolve(self, request: Request) -> Response:
        from mergefile.ui.evolve_view import evolve_view

        folder = request.query_params.get("folder")
        return JSONResponse(await run_in_threadpool(evolve_view, self.session, folder))

    async def events(self, request: Request) -> Response:
        """Server-sent events: the live snapshot whenever it changes, a comment now and then."""

        async def stream():
            last, quiet = None, 0.0
            while not self.stopping.is_set() and not await request.is_disconnected():
                snap = json.dumps(await run_in_threadpool(self.manager.snapshot), sort_keys=True)
                if snap != last:
                    last, quiet = snap, 0.0
                    yield f"event: status\ndata: {snap}\n\n"
                elif quiet > KEEP_ALIVE_S:
                    quiet = 0.0
                    yield ": keep-alive\n\n"
                await asyncio.sleep(EVENT_PERIOD_S)
                quiet += EVENT_PERIOD_S

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})
