"""`create_app(settings)`: the FastAPI application of one worker."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import hoptrace, redaction
from service.api import errors
from service.api.auth import RevokedTokens, TokenSigner
from service.api.edge import Edge, ExceptionLayer
from service.api.hashing import PasswordHashing
from service.api.revocation import RevocationSync
from service.api.routes import docs, events, items, ops, uploads, users
from service.api.routing import SERVER_CONNECTION
from service.api.throttle import LoginLimits, LoginThrottle, MemoryCounts, RedisCounts
from service.backplane import Backplane, backplane_from_url
from service.config import Settings
from service.keys import Keys, load_keys
from service.logging import flush_logs
from service.metrics import preinitialise_routes
from service.realtime.readcache import ReadCache
from service.realtime.relay import EventRelay
from service.realtime.ring import Ring
from service.storeclient import StoreClient, connect_store

logger = logging.getLogger(__name__)

MULTIPART_OVERHEAD = 64 * 1024


def create_app(
    settings: Settings | None = None,
    store: StoreClient | None = None,
    backplane: Backplane | None = None,
    keys: Keys | None = None,
) -> FastAPI:
    redaction.install()  # gunicorn workers do not pass through the CLI's main()
    settings = settings or Settings()
    keys = keys or load_keys(settings)
    backplane = backplane or backplane_from_url(settings.redis_url, keys.backplane)
    store = store or connect_store(settings, backplane, keys.store)
    revoked = RevokedTokens()
    revocations = RevocationSync(store, revoked, settings.revocation_poll_ms / 1000)
    ring = Ring(
        settings.stream_ring_events,
        settings.stream_ring_mib * 1024 * 1024,
        store=store,
        flush_interval=settings.stream_flush_ms / 1000,
        stall_seconds=settings.stream_stall_seconds,
        revoked=revoked,
    )
    poll = 1.0
    if settings.store_url and not settings.redis_url:
        # Nobody publishes to this worker: it can only learn of changes by asking the store.
        logger.warning("no REDIS_URL: change events reach this worker by polling the store")
        poll = 0.1
    relay = EventRelay(backplane, store, ring, poll_interval=poll, inbox=settings.relay_inbox)
    read_cache = ReadCache(settings.read_cache_bytes) if settings.read_cache_bytes else None
    if read_cache is not None:
        relay.listen(read_cache.on_events, read_cache.on_reset)
    failures = RedisCounts(settings.redis_url) if settings.redis_url else MemoryCounts()
    throttle = LoginThrottle(
        failures,
        LoginLimits(
            per_name_and_address=settings.login_failures_per_name_and_address,
            per_address=settings.login_failures_per_address,
            per_name=settings.login_failures_per_name,
            window_seconds=settings.login_window_seconds,
        ),
    )
    hashing = PasswordHashing(settings.password_hash_threads, settings.password_hash_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await backplane.start()
        await store.start()  # embedded mode: also the store's outbox publisher
        await relay.start()
        await revocations.start()
        restore_signals = _end_streams_on_signal(ring)
        try:
            yield
        finally:
            # shutdown: end streams, stop consuming events, then release the store
            restore_signals()
            ring.close()
            await revocations.close()
            await relay.close()
            await store.close()
            await backplane.close()
            if isinstance(failures, RedisCounts):
                await failures.close()
            hashing.close()
            flush_logs()  # the access lines of the last requests (service.logging)

    app = DuckcastApp(
        edge=functools.partial(
            Edge,
            max_body=settings.max_body_bytes,
            body_limits={"/api/upload": settings.upload_max_bytes + MULTIPART_OVERHEAD},
            access_log=settings.access_log,
        ),
        title="Duckcast",
        version="1.0.0",
        summary="Realtime CRUD over JSON and Protocol Buffers",
        lifespan=lifespan,
        docs_url=None,  # service.api.routes.docs serves /docs without a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.ring = ring
    app.state.read_cache = read_cache
    app.state.keys = keys
    app.state.signer = TokenSigner(keys.token, settings.token_ttl_seconds)
    app.state.revoked = revoked
    app.state.revocations = revocations
    app.state.login_throttle = throttle
    app.state.hashing = hashing
    # /readyz: a failed readiness check means this worker cannot serve (503); a degradation
    # is reported in the body only (events still reach subscribers from the store's log).
    readiness: dict[str, Callable[[], str | None]] = {
        "events": lambda: None if relay.started.is_set() else "event relay not started",
        # Until then a token revoked elsewhere would still be accepted here.
        "sessions": lambda: None if revocations.synced.is_set() else "revocations not loaded",
    }
    degradations: dict[str, Callable[[], str | None]] = {
        "backplane": lambda: None if backplane.live else "subscription is not live",
    }
    app.state.readiness = readiness
    app.state.degradations = degradations
    errors.install(app)
    # One router: every route sits in the app's own router, the hot ones first (the router
    # tries each route's pattern in turn). Not through include_router: FastAPI 0.165 matches
    # an included router's routes twice per request, saving and restoring scope keys around
    # each candidate. The routers add no prefix, tags or dependencies at inclusion, so nothing
    # else differs (but app.dependency_overrides does not reach these routes).
    routers = (items.router, events.router, users.router, uploads.router, ops.router)
    for router in (*routers, docs.router):  # and the API docs' page and files (no CDN)
        app.router.routes.extend(router.routes)
    app.mount("/static", ops.static_assets(), name="static")
    preinitialise_routes(
        (method, route.path)
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    )
    return app


class DuckcastApp(FastAPI):
    """FastAPI, with Edge (service.api.edge) as the outermost layer of every request, in the
    place of Starlette's ServerErrorMiddleware (Edge answers the 500 itself), and none of the
    layers that would do nothing here: every layer is a frame (and often a `send` wrapper)
    per request, held as long as the request, and an event stream is held for hours,
    thousands per worker. Left out: FastAPI's OpenTelemetry hooks (metrics are Prometheus,
    service.metrics) and its body limit (Edge limits bodies), so neither may be configured.

    A middleware added with `add_middleware` sits inside Edge, around every route (the last
    added outermost, as in FastAPI), and outside the exception handlers (ExceptionLayer, in
    the place of Starlette's ExceptionMiddleware and FastAPI's AsyncExitStackMiddleware), so
    it sees their answers. Also the one thing no middleware can see: the server's own `send`,
    which the stream handlers need (the disconnect flag, aborting a stalled transport); it
    rides in the scope (service.api.routing.StreamEndpoint)."""

    def __init__(self, *, edge: Callable[[ASGIApp], ASGIApp], **kwargs: Any) -> None:
        if kwargs.get("max_body_size") is not None or "telemetry" in kwargs:
            raise ValueError("DuckcastApp: Edge limits bodies, and telemetry is off")
        # FastAPI's OpenTelemetry hooks would look up a provider on every request to find none
        kwargs["telemetry"] = {"tracing": False, "metrics": False, "logs": False}
        super().__init__(**kwargs)
        self.edge = edge

    def build_middleware_stack(self) -> ASGIApp:
        # FastAPI's stack (fastapi.applications.FastAPI.build_middleware_stack) from the user
        # middleware inwards; the 500 / Exception handler is ServerErrorMiddleware's, and Edge's
        # job here.
        handlers = {k: v for k, v in self.exception_handlers.items() if k not in (500, Exception)}
        # Starlette's ExceptionMiddleware and FastAPI's AsyncExitStackMiddleware in one frame
        app: ASGIApp = ExceptionLayer(self.router, handlers)
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return self.edge(app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        connection = getattr(send, "__self__", None)
        if connection is not None:
            scope[SERVER_CONNECTION] = connection
        if scope["type"] == "lifespan":
            await super().__call__(scope, receive, send)
            return
        if hoptrace.HOPS is not None and scope["type"] == "http" and scope["method"] == "POST":
            send = _traced(send)
        # What FastAPI.__call__ and Starlette.__call__ do for a request with telemetry off, in
        # one frame instead of three
        if self.root_path:
            scope["root_path"] = self.root_path
        scope["app"] = self
        if self.middleware_stack is None:
            self.middleware_stack = self.build_middleware_stack()
        await self.middleware_stack(scope, receive, send)


def _traced(send: Send) -> Send:
    """Diagnostic (service.hoptrace): this POST's row, stamped as it goes; written if the
    request reached the store client."""
    row: dict[str, Any] = {"kind": "post", "rx": hoptrace.RX.get(), "app": time.monotonic()}
    hoptrace.POST.set(row)

    async def traced_send(message: Message) -> None:
        await send(message)
        if message["type"] == "http.response.start":
            row["resp"] = time.monotonic()
        elif not message.get("more_body", False) and "call" in row and hoptrace.HOPS:
            row["end"] = time.monotonic()
            hoptrace.HOPS.add(row)

    return traced_send


def _end_streams_on_signal(ring: Ring) -> Callable[[], None]:
    """On SIGTERM/SIGINT, end SSE streams and close WebSockets at once.

    uvicorn stops accepting and waits for open responses to finish, but an event stream never
    finishes by itself: without this, gunicorn's graceful timeout kills the worker and the
    lifespan shutdown never runs. We chain onto uvicorn's handlers, which stay in charge.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        prev = signal.getsignal(sig)

        def handler(signum: int, frame: object, prev: object = prev) -> None:
            loop.call_soon_threadsafe(ring.close)
            if callable(prev):
                prev(signum, frame)

        previous[sig] = prev
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, prev in previous.items():
            signal.signal(sig, prev)

    return restore
