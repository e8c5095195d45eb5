"""Controllable fakes of the server, the client's external peer: a scripted change stream over
SSE (an httpx mock transport) and over WebSocket (a real websockets server on a free port), and
a scripted HTTP API. Each connection of a script says which resume point it expects to be
asked for, what it sends, and how it ends; the fake records what it was asked."""

from __future__ import annotations

import http
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import httpx
import orjson
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection, serve

from service.pb import duckcast_pb2 as pb
from service.wire import item_json

End = Literal["eof", "retry", "overflow", "restart", "expired", "policy"]
SSE_NAMES = {pb.CREATED: "item_created", pb.UPDATED: "item_updated", pb.DELETED: "item_deleted"}
# How each scripted end looks on a WebSocket (a close code) and over SSE (an event, or EOF).
WS_CLOSE = {
    "eof": 1000,
    "retry": 1013,
    "overflow": 4008,
    "restart": 1012,
    "expired": 4401,
    "policy": 1008,
}
KEEPALIVE = b": keep-alive\n\n"
SSE_END = {
    "eof": b"",
    "retry": b"event: error\ndata: store unavailable\n\n",
    "overflow": b'event: overflow\ndata: {"reason": "too slow"}\n\n',
    "restart": b"",
    "expired": b"event: expired\ndata: {}\n\n",
    "policy": b"",
}


def created(seq: int) -> pb.DomainEvent:
    item = pb.Item(id=seq, title=f"item {seq}", status="active", owner_id=1, version=1)
    return pb.DomainEvent(type=pb.CREATED, seq=seq, item=item)


def reset(seq: int) -> pb.DomainEvent:
    return pb.DomainEvent(type=pb.RESET, seq=seq)


@dataclass
class Connection:
    events: list[pb.DomainEvent] = field(default_factory=list)
    end: End = "eof"
    refuse: int | None = None  # answer the request with this HTTP status instead


@dataclass
class StreamScript:
    connections: list[Connection]
    asked: list[int | None] = field(default_factory=list)  # resume point of each request
    paths: list[str] = field(default_factory=list)

    def next(self, since: int | None, path: str) -> Connection:
        self.asked.append(since)
        self.paths.append(path)
        if len(self.asked) > len(self.connections):
            # Past the script: an answer that ends any subscription (ApiError 410), so a
            # client that reconnects where it should have stopped fails its test at once.
            return Connection(refuse=410)
        return self.connections[len(self.asked) - 1]


def sse_body(conn: Connection) -> bytes:
    chunks = [b'retry: 2000\nevent: connected\ndata: {"seq": 0}\n\n']
    for ev in conn.events:
        if ev.type == pb.RESET:
            chunks.append(b'id: %d\nevent: reset\ndata: {"seq": %d}\n\n' % (ev.seq, ev.seq))
        else:
            data = orjson.dumps(
                {"id": ev.deleted_id} if ev.type == pb.DELETED else item_json(ev.item)
            )
            name = SSE_NAMES[ev.type].encode()
            chunks.append(b"id: %d\nevent: %s\ndata: %s\n\n" % (ev.seq, name, data))
        # as the server sends when idle: httpx-sse 0.4 turns a comment after an event with an
        # id into an empty `message` (florimondmanca/httpx-sse#35), which the client must skip
        chunks.append(KEEPALIVE)
    chunks.append(SSE_END[conn.end])
    return b"".join(chunks)


Route = Callable[[httpx.Request], httpx.Response]


def api_transport(script: StreamScript | None = None, **routes: Route) -> httpx.MockTransport:
    """A mock of the HTTP API: `/api/events` plays `script`; `routes` maps "METHOD /path"
    (spaces as underscores: `GET_/api/items`) to handlers."""

    def handle(request: httpx.Request) -> httpx.Response:
        key = f"{request.method}_{request.url.path}"
        if key in routes:
            return routes[key](request)
        if request.url.path == "/api/events" and script is not None:
            header = request.headers.get("last-event-id")
            conn = script.next(int(header) if header else None, str(request.url))
            if conn.refuse is not None:
                return httpx.Response(conn.refuse, json={"detail": f"refused {conn.refuse}"})
            return httpx.Response(
                200, headers={"content-type": "text/event-stream"}, content=sse_body(conn)
            )
        return httpx.Response(404, json={"detail": f"no route {key}"})

    return httpx.MockTransport(handle)


def page_at(seq: int) -> Route:
    """GET /api/items answering an empty page that reflects `seq`."""
    body = pb.ItemPage(page=1, pages=0, limit=1, seq=seq).SerializeToString()
    return lambda request: httpx.Response(
        200, content=body, headers={"content-type": "application/protobuf"}
    )


class WebSocketPeer:
    """A websockets server on a free port playing a StreamScript on `/ws/items`."""

    def __init__(self, script: StreamScript) -> None:
        self.script = script
        self.server = serve(
            self._handle,
            "127.0.0.1",
            0,
            process_request=self._refuse,
            compression=None,
        )
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._current: dict[int, Connection] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> WebSocketPeer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.thread.join(10)

    def _refuse(self, ws: ServerConnection, request: Request) -> Response | None:
        since = request.path.partition("since=")[2].partition("&")[0]
        conn = self.script.next(int(since) if since else None, request.path)
        if conn.refuse is not None:
            status = http.HTTPStatus(conn.refuse)
            body = orjson.dumps({"detail": f"refused {conn.refuse}"})
            headers = Headers({"Content-Type": "application/json"})
            return Response(status.value, status.phrase, headers, body)
        self._current[id(ws)] = conn
        return None

    def _handle(self, ws: ServerConnection) -> None:
        conn = self._current.pop(id(ws))
        for ev in conn.events:
            ws.send(ev.SerializeToString())
        ws.close(WS_CLOSE[conn.end], f"scripted {conn.end}")


@dataclass
class Recorder:
    """Every request a mock transport saw."""

    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, answers: Iterator[httpx.Response | Exception]) -> httpx.MockTransport:
        def handle(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            answer = next(answers)
            if isinstance(answer, Exception):
                raise answer
            return answer

        return httpx.MockTransport(handle)
