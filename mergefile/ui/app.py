"""The HTTP side of ``mergebuild ui``: a Starlette app, served by uvicorn on 127.0.0.1.

Safety, as Jupyter does it: a random token in the URL; the first page load turns it into a
``SameSite=Strict`` cookie, every other request must carry the token (query, header or cookie)
and anything that changes state must carry it in the ``X-Mergebuild-Token`` header (a form on
another site cannot set it). The Host header must name the loopback address (no DNS rebinding).
Nothing serves files by path: the page's own assets come from the package, and every answer is
JSON made from the recipe, its plan, its outputs' manifests and the cache.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from mergefile.errors import LockedError, UserError

STATIC = {"app.js": "text/javascript", "graph.js": "text/javascript", "style.css": "text/css",
          "index.html": "text/html"}
HEADER = "x-mergebuild-token"
EVENT_PERIOD_S = 0.25


def asset(name: str) -> bytes:
    """One of the page's files, shipped inside the package (``mergefile/ui/static``)."""
    return resources.files("mergefile.ui").joinpath("static", name).read_bytes()


def _error(e: UserError) -> JSONResponse:
    return JSONResponse({"error": f"mergebuild: error: {e.render()}"}, status_code=409 if isinstance(e, LockedError) else 400)


def make_app(session, manager, token: str, port: int) -> Starlette:
    """The app for one recipe session; ``port`` names the cookie and the accepted Host."""
    cookie = f"mergebuild_ui_{port}"
    hosts = {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}
    stopping = threading.Event()  # set by UiServer.stop (another thread): event streams end

    def authorized(request: Request, write: bool) -> bool:
        if request.headers.get("host") not in hosts:
            return False
        given = request.headers.get(HEADER) if write else (
            request.query_params.get("token") or request.headers.get(HEADER) or request.cookies.get(cookie))
        return given is not None and hmac.compare_digest(given, token)

    def guarded(handler, write: bool = False):
        async def endpoint(request: Request) -> Response:
            if not authorized(request, write):
                return JSONResponse({"error": "forbidden: open the URL mergebuild ui printed (it carries the token)"},
                                    status_code=403)
            try:
                return await handler(request)
            except UserError as e:
                return _error(e)
        return endpoint

    async def body(request: Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except ValueError:
            raise UserError("the request body is not JSON") from None
        if not isinstance(data, dict):
            raise UserError("the request body must be a JSON object")
        return data

    async def index(request: Request) -> Response:
        resp = Response(asset("index.html"), media_type="text/html")
        resp.set_cookie(cookie, token, httponly=True, samesite="strict")
        return resp

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return JSONResponse({"error": "not found"}, status_code=404)
        return Response(asset(name), media_type=STATIC[name])

    async def recipe(request: Request) -> Response:
        text = await run_in_threadpool(session.read_text)
        view = await run_in_threadpool(session.plan_view)
        return JSONResponse({"path": str(session.path), "config": session.config_target is not None,
                             "text": text, "view": view})

    async def plan(request: Request) -> Response:
        text = _text(await body(request))
        return JSONResponse(await run_in_threadpool(session.plan_view, text))

    async def save(request: Request) -> Response:
        text = _text(await body(request))
        await run_in_threadpool(session.save, text)
        return JSONResponse({"saved": str(session.path), "view": await run_in_threadpool(session.plan_view)})

    async def target(request: Request) -> Response:
        from mergefile.ui.views import target_view

        return JSONResponse(await run_in_threadpool(target_view, session, request.query_params.get("name", "")))

    async def build(request: Request) -> Response:
        name = (await body(request)).get("target")
        if not isinstance(name, str) or not name:
            raise UserError("a build request needs a target name")
        job = await run_in_threadpool(manager.start, name)
        return JSONResponse({"build": job.to_json()}, status_code=202)

    async def cancel(request: Request) -> Response:
        build_id = (await body(request)).get("id")
        if not isinstance(build_id, int):
            raise UserError("a cancel request needs the build's id")
        return JSONResponse({"build": manager.cancel(build_id).to_json()})

    async def builds(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(manager.snapshot))

    async def cache(request: Request) -> Response:
        from mergefile.ui.views import cache_view

        return JSONResponse(await run_in_threadpool(cache_view, session))

    async def evolve(request: Request) -> Response:
        from mergefile.ui.evolve_view import evolve_view

        return JSONResponse(await run_in_threadpool(evolve_view, session, request.query_params.get("folder")))

    async def log(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(_log_records, session, request.query_params.get("run")))

    async def events(request: Request) -> Response:
        async def stream():
            last, quiet = None, 0.0
            while not stopping.is_set() and not await request.is_disconnected():
                snap = json.dumps(await run_in_threadpool(manager.snapshot), sort_keys=True)
                if snap != last:
                    last, quiet = snap, 0.0
                    yield f"event: status\ndata: {snap}\n\n"
                elif quiet > 15:
                    quiet = 0.0
                    yield ": keep-alive\n\n"
                await asyncio.sleep(EVENT_PERIOD_S)
                quiet += EVENT_PERIOD_S
        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    routes = [Route("/", guarded(index)), Route("/static/{name}", guarded(static)),
              Route("/api/recipe", guarded(recipe)), Route("/api/target", guarded(target)),
              Route("/api/builds", guarded(builds)), Route("/api/cache", guarded(cache)),
              Route("/api/log", guarded(log)), Route("/api/evolve", guarded(evolve)),
              Route("/api/events", guarded(events)),
              Route("/api/plan", guarded(plan, True), methods=["POST"]),
              Route("/api/save", guarded(save, True), methods=["POST"]),
              Route("/api/build", guarded(build, True), methods=["POST"]),
              Route("/api/cancel", guarded(cancel, True), methods=["POST"])]
    app = Starlette(routes=routes)
    app.state.stopping = stopping
    return app


def _text(data: dict[str, Any]) -> str:
    text = data.get("text")
    if not isinstance(text, str):
        raise UserError("the request needs the recipe text")
    return text


def _log_records(session, spec: str | None) -> dict[str, Any]:
    """One logged run's records (``mergebuild log RUN``), newest run by default."""
    from mergefile.run.history import find_run, summarize

    with session.store() as store:
        run_id = find_run(store.log, spec)
        records = store.log.read(run_id)
    return {"run_id": run_id, "summary": summarize(run_id, records).to_json(), "records": records[:2000]}
