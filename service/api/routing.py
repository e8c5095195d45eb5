"""Fast routes inside FastAPI's own router, so that routing, `root_path`, every middleware and
the exception handlers hold for them as for any route.

- `LeanRoute` is an `APIRoute` (FastAPI builds its OpenAPI operation, validation and error
  answers from the endpoint's declaration, as usual) that first offers each request to a
  *lean* handler attached to the endpoint with `@lean(handler)`: a plain ASGI function that
  answers the cases it fully recognises and returns False, having read and sent nothing, for
  the rest, which the declared endpoint then answers. A well-formed hot request so skips
  dependency solving and FastAPI's request wrapping, nothing else.
- `StreamEndpoint` makes a long-lived stream handler a route endpoint (SSE through a
  `LeanRoute` that takes every request, WebSocket through a Starlette `WebSocketRoute`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.edge import STREAM_KEY

Lean = Callable[[Scope, Receive, Send], Awaitable[bool]]
F = TypeVar("F", bound=Callable[..., Any])

_LEAN = "__duckcast_lean__"
# The server's connection object (uvicorn's protocol instance), put in the scope by the app
# before any middleware wraps `send` in a closure that hides it (service.api.app).
SERVER_CONNECTION = "duckcast.server_connection"


def lean(handler: Lean) -> Callable[[F], F]:
    """Attach a lean handler to a route endpoint (read by LeanRoute)."""

    def attach(endpoint: F) -> F:
        setattr(endpoint, _LEAN, handler)
        return endpoint

    return attach


class LeanRoute(APIRoute):
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self.lean: Lean | None = getattr(endpoint, _LEAN, None)
        # HEAD (added to every GET route) stays with FastAPI: it is never hot.
        self.lean_methods = frozenset(self.methods or ()) - {"HEAD"}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.lean is not None
            and scope["method"] in self.lean_methods
            and await self.lean(scope, receive, send)
        ):
            return
        await super().handle(scope, receive, send)


class StreamEndpoint:
    """A stream handler as a route endpoint. An object, not a function: Starlette calls an
    object endpoint as plain ASGI, with no Request built or held for the stream's lifetime.

    The handler gets a `send` that has passed through every middleware, with the server's
    connection attached as `send.__self__` (what uvicorn's own `send` has): the handlers read
    its `disconnected` flag and abort a stalled transport through it
    (service.api.routes.events._Client)."""

    def __init__(self, handler: ASGIApp) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[STREAM_KEY] = True
        connection = scope.get(SERVER_CONNECTION)
        if connection is not None:
            send = _ConnectionSend(send, connection)
        await self.handler(scope, receive, send)

    async def take_all(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """As the lean handler of a LeanRoute: every request of the route is the stream's."""
        await self(scope, receive, send)
        return True


class _ConnectionSend:
    def __init__(self, send: Send, connection: object) -> None:
        self._send = send
        self.__self__ = connection

    async def __call__(self, message: Message) -> None:
        await self._send(message)
