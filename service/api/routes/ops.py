from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from service import pb
from service.api import csp
from service.api.errors import public_message
from service.errors import DuckcastError, NotFound
from service.metrics import exposition

router = APIRouter(tags=["operations"])

STATIC = Path(__file__).resolve().parents[1] / "static"
# The public schema only: store.proto is the internal worker <-> store protocol.
PUBLIC_PROTOS = frozenset({"duckcast"})
# Package data (`make protos` copies protos/*.proto there): no checkout needed at run time.
SCHEMAS = Path(pb.__file__).resolve().parent


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"description": "this worker cannot serve (the store does not answer)"}},
)
async def readyz(request: Request) -> Response:
    """200 `ready`, or 200 `degraded` with the reasons while the worker serves with a dead
    backplane (events still reach subscribers from the store's log, a little later); 503
    `unavailable` only while it cannot serve. A load balancer must not drop every worker for
    a Redis blip."""
    state = request.app.state
    reasons: list[str] = []
    try:
        await asyncio.wait_for(state.store.ping(), timeout=2.0)
    except DuckcastError as exc:
        reasons.append(f"store: {public_message(exc)}")
    except TimeoutError:
        reasons.append("store: no answer within 2s")
    reasons += _problems(state.readiness)
    if reasons:
        return JSONResponse(
            {"status": "unavailable", "reasons": reasons},
            status_code=503,
            headers={"Retry-After": "1"},
        )
    degraded = _problems(state.degradations)
    if degraded:
        return JSONResponse({"status": "degraded", "reasons": degraded})
    return JSONResponse({"status": "ready"})


def _problems(checks: dict[str, Callable[[], str | None]]) -> list[str]:
    return [f"{name}: {problem}" for name, check in checks.items() if (problem := check())]


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
    path = SCHEMAS / f"{name}.proto"
    return FileResponse(path, media_type="text/plain; charset=utf-8")
