"""The uvicorn settings Duckcast serves with, in one place: the gunicorn worker class
(`service/gunicorn_conf.py`) and embedded `duckcast serve` both use them.

`BoundedHttpProtocol` puts limits on the request head, which uvicorn's httptools protocol does
not have: it keeps appending header bytes until the client stops (60 connections each sending
an unfinished 16 MB header held 611 MB; 300 slowloris connections stayed open indefinitely),
and sends a response's head and the first bytes of its body in one write (`_HeldHead`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn_worker import UvicornWorker

from service import hoptrace
from service.config import Settings

UVICORN_OPTIONS: dict[str, Any] = {
    # permessage-deflate keeps a zlib context per WebSocket (hundreds of KB with 10k sockets)
    # and compresses every frame once per subscriber: the shared encoding would be lost.
    "ws_per_message_deflate": False,
    # Clients send nothing on /ws/items: no reason to accept 16 MiB messages.
    "ws_max_size": 64 * 1024,
    # The app writes its own access log (service/api/edge.py): uvicorn's has the raw path,
    # query string included, which may carry a token.
    "access_log": False,
}


class _HeadTooLarge(Exception):
    pass


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded request head (request line + headers).

    - Size: more than `max_head_bytes`, or more than `max_headers` header lines, is answered
      431 and the connection closed as soon as it is seen, so at most one read (~256 KiB)
      beyond the limit is ever held.
    - Time: a connection must complete each request head within `head_timeout` seconds of
      that request starting (or of connecting), else it is closed (slowloris, half-open
      connections that never send). Idle keep-alive connections are closed by uvicorn's own
      keep-alive timeout.

    Cost per request: a counter and two comparisons; a timer only for a head that does not
    arrive in one read (and one per connection for its first request).
    """

    max_head_bytes: ClassVar[int] = 64 * 1024
    max_headers: ClassVar[int] = 100
    head_timeout: ClassVar[float] = 10.0

    # >= 0: bytes of the current, unfinished request head; -1: not inside a head
    _head_bytes = -1
    _chunk = 0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's data_received, plus the head limits (its own 400 path would hide a 431)
        if hoptrace.HOPS is not None:  # the request task started below inherits it
            hoptrace.RX.set(time.monotonic())
        self._unset_keepalive_if_required()
        self._chunk = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._refuse_head()
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        if self._head_bytes >= 0:  # a request head is still incomplete
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes or len(self.headers) > self.max_headers:
                self._refuse_head()
            elif self._head_timer is None:
                self._head_timer = self.loop.call_later(self.head_timeout, self._head_too_slow)
        elif self._head_timer is None and (self.cycle is None or self.cycle.response_complete):
            # bytes that began no request (blank lines between requests) must not keep an
            # otherwise idle connection open
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        counted, self._head_bytes = self._head_bytes, -1
        self._stop_head_timer()
        if len(self.headers) > self.max_headers:
            raise _HeadTooLarge
        if counted + self._chunk > self.max_head_bytes:
            # rare: this read was large, so count the head exactly
            size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
            if size > self.max_head_bytes:
                raise _HeadTooLarge
        previous = self.cycle
        super().on_headers_complete()
        if self.cycle is not previous:  # a request (not a WebSocket upgrade) began
            cycle = self.cycle
            cycle.transport = _HeldHead(cycle, self.transport, self.loop)  # type: ignore[assignment]

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _refuse_head(self) -> None:
        self._stop_head_timer()
        body = b'{"detail":"request headers larger than %d bytes or %d lines"}' % (
            self.max_head_bytes,
            self.max_headers,
        )
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        self.transport.close()


class _HeldHead:
    """The transport as one response's cycle sees it until the response's head is out.

    uvicorn writes a response's status line and headers as soon as the app starts the
    response, and its body in a second write: two sends, two TCP segments, and on a cached
    GET they were the largest cost in the worker's profile. Here the first write (the head) is
    held until the next (the body) and sent with it, or at the end of this turn of the event
    loop if no body comes by then (a stream's next event, a `100 Continue` the client waits
    for). Then the cycle gets its transport back: a stream's later writes go straight to it.
    """

    __slots__ = ("_cycle", "_flush", "_held", "_loop", "_transport")

    def __init__(
        self,
        cycle: RequestResponseCycle,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._cycle: RequestResponseCycle | None = cycle
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._flush: asyncio.Handle | None = None

    def write(self, data: bytes) -> None:
        if self._cycle is not None:
            if self._held is None:  # the head
                self._held = data
                self._flush = self._loop.call_soon(self._release)
                return
            if self._flush is not None:
                self._flush.cancel()
            data, self._held = self._held + data, None
            self._release()
        self._transport.write(data)

    def _release(self) -> None:
        if self._cycle is not None:
            self._cycle.transport, self._cycle = self._transport, None
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self._release()  # a close sends what was written first
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)  # is_closing, abort, get_extra_info, ...


def http_protocol(settings: Settings) -> type[BoundedHttpProtocol]:
    """The protocol class with this deployment's limits."""
    return type(
        "DuckcastHttpProtocol",
        (BoundedHttpProtocol,),
        {
            "max_head_bytes": settings.max_header_bytes,
            "max_headers": settings.max_header_lines,
            "head_timeout": settings.header_timeout_seconds,
        },
    )


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    return {**UVICORN_OPTIONS, "http": http_protocol(settings), "root_path": settings.root_path}


class DuckcastWorker(UvicornWorker):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # the settings come from the environment the supervisor (or compose) gives gunicorn
        self.CONFIG_KWARGS = {**UvicornWorker.CONFIG_KWARGS, **uvicorn_options(Settings())}
        super().__init__(*args, **kwargs)
