from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from service.api import csp
from service.api.errors import public_message
from service.errors import DuckcastError, NotFound
from service.metrics import exposition
from service.paths import repo_dir

router = APIRouter(tags=["operations"])

STATIC = Path(__file__).resolve().parents[1] / "static"
# The public schema only: store.proto is the internal worker <-> store protocol.
PUBLIC_PROTOS = frozenset({"duckcast"})


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready, with the reason"}})
async def readyz(request: Request) -> Response:
    reasons: list[str] = []
    try:
        await asyncio.wait_for(request.app.state.store.ping(), timeout=2.0)
    except DuckcastError as exc:
        reasons.append(f"store: {public_message(exc)}")
    except TimeoutError:
        reasons.append("store: no answer within 2s")
    for name, check in request.app.state.readiness.items():
        problem = check()
        if problem:
            reasons.append(f"{name}: {problem}")
    if reasons:
        return JSONResponse(
            {"status": "unavailable", "reasons": reasons},
            status_code=503,
            headers={"Retry-After": "1"},
        )
    return JSONResponse({"status": "ready"})


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    body, media_type = exposition()
    return Response(body, media_type=media_type)


@router.get("/", include_in_schema=False)
async def index() -> Response:
    return HTMLResponse(
        (STATIC / "index.html").read_text(),
        headers={"Content-Security-Policy": csp.APP, "Cache-Control": "no-cache"},
    )


class StaticAssets(StaticFiles):
    """The app's modules and styles. `no-cache` makes the browser revalidate (a cheap 304 by
    ETag) rather than guess a lifetime from Last-Modified and run stale code after an upgrade."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = "no-cache"
        return response


def static_assets() -> StaticAssets:
    return StaticAssets(directory=STATIC)


@router.get("/protos/{name}.proto", include_in_schema=False)
async def proto_file(name: str) -> Response:
    if name not in PUBLIC_PROTOS:
        raise NotFound(f"no schema named {name}.proto")
    path = repo_dir("protos") / f"{name}.proto"
    return FileResponse(path, media_type="text/plain; charset=utf-8")
