"""Subscriber processes for `python -m loadtests.fanout`.

Each client process holds many SSE (`GET /api/events`) and WebSocket (`/ws/items`, protobuf
binary frames) subscriptions on one event loop (uvloop when available). The subscribers are
plain `asyncio.Protocol`s: no task, no StreamReader and no library object per connection, so a
delivery costs one `data_received` callback plus a few slices. SSE is HTTP/1.1 written by hand
with the chunked body decoded incrementally; the WebSocket is a minimal RFC 6455 client (no
extensions offered, pings answered, no fragmentation expected from the server).

Per event every subscriber records the `seq` and the receive time (`time.time()`, taken once
per read). The commit time of a seq is the `created_at` of the item in the event, parsed once
per process and seq. The parent talks to the process over a `multiprocessing` pipe:

    ("open", {"sse": n, "ws": m, "concurrency": c, "limit": s}) -> ("opened", summary)
    ("status", None)                                              -> ("status", summary)
    ("drain", {"start_seq": a, "final_seq": b, "limit": t})     -> ("drained", results)
    ("reset", None)  close every subscriber and forget them       -> ("reset", None)
    ("deflate", bool)  (before "open") offer permessage-deflate    -> ("deflate", None)
    ("close", None)                                               -> ("closed", summary)

Every wait in here is bounded in time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import resource
import time
import zlib
from array import array
from collections import Counter
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any, cast

from service.pb import duckcast_pb2 as pb

CREATED_AT = b'"created_at":"'
PROTO_CREATED = pb.CREATED


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Recorder:
    """What one process saw: per subscriber the seqs and receive times, per seq the commit."""

    def __init__(self) -> None:
        self.commit: dict[int, float] = {}  # seq -> created_at (epoch seconds)
        self.subs: list[Subscriber] = []


class Subscriber(asyncio.Protocol):
    kind = "?"

    def __init__(self, rec: Recorder, host: str, port: int, path: str) -> None:
        self.rec = rec
        self.host, self.port, self.path = host, port, path
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.seqs = array("q")
        self.times = array("d")
        self.buf = b""
        self.headers_done = False
        self.closed_reason: str | None = None  # why the stream ended (None: still open)
        self.connected_seq: int | None = None
        self.bytes = 0

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but quack like one
        self.transport = t = cast(asyncio.Transport, transport)
        t.write(self.request())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed_reason is None:
            self.closed_reason = f"connection lost ({type(exc).__name__})" if exc else "eof"
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(self.closed_reason))

    def data_received(self, data: bytes) -> None:
        self.bytes += len(data)
        if self.headers_done:
            self.on_body(data, time.time())
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > 65536:
                self.fail("response headers too long")
            return
        head, rest = self.buf[:end], self.buf[end + 4 :]
        self.buf = b""
        status = head.split(b"\r\n", 1)[0]
        problem = self.check_head(status, head.lower())
        if problem:
            self.fail(problem)
            return
        self.headers_done = True
        if not self.ready.done():
            self.ready.set_result(None)
        if rest:
            self.on_body(rest, time.time())

    # -- helpers ---------------------------------------------------------------------------

    def fail(self, reason: str) -> None:
        if self.closed_reason is None:
            self.closed_reason = reason
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        if self.closed_reason is None:
            self.closed_reason = "closed by client"
        if self.transport is not None:
            self.transport.abort()

    def record(self, seq: int, now: float) -> None:
        self.seqs.append(seq)
        self.times.append(now)

    def request(self) -> bytes:
        raise NotImplementedError

    def check_head(self, status: bytes, head: bytes) -> str | None:
        raise NotImplementedError

    def on_body(self, data: bytes, now: float) -> None:
        raise NotImplementedError


class SSESubscriber(Subscriber):
    kind = "sse"

    def __init__(self, rec: Recorder, host: str, port: int, path: str) -> None:
        super().__init__(rec, host, port, path)
        self.chunked = False
        self.raw = b""  # chunked-encoding bytes not consumed yet
        self.remaining = 0  # bytes left in the current chunk
        self.need_crlf = False
        self.events = b""  # decoded SSE text not yet split into events

    def request(self) -> bytes:
        return (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
        ).encode()

    def check_head(self, status: bytes, head: bytes) -> str | None:
        if not status.startswith(b"HTTP/1.1 200"):
            return f"HTTP status {status.decode(errors='replace')}"
        if b"content-type: text/event-stream" not in head:
            return "not text/event-stream"
        self.chunked = b"transfer-encoding: chunked" in head
        return None

    def dechunk(self, data: bytes) -> bytes:
        buf = self.raw + data if self.raw else data
        out: list[bytes] = []
        pos, n = 0, len(buf)
        while pos < n:
            if self.remaining:
                take = min(self.remaining, n - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self.remaining -= take
                if self.remaining:
                    break
                self.need_crlf = True
            if self.need_crlf:
                if n - pos < 2:
                    break
                pos += 2
                self.need_crlf = False
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(buf[pos:eol].split(b";", 1)[0], 16)
            pos = eol + 2
            if size == 0:
                self.fail("stream ended by the server")
                break
            self.remaining = size
        self.raw = buf[pos:]
        return b"".join(out)

    def on_body(self, data: bytes, now: float) -> None:
        text = self.dechunk(data) if self.chunked else data
        if self.events:
            text = self.events + text
        blocks = text.split(b"\n\n")
        self.events = blocks.pop()
        commit = self.rec.commit
        for block in blocks:
            if block.startswith(b"id: "):
                nl = block.find(b"\n")
                seq = int(block[4:nl])
                self.seqs.append(seq)
                self.times.append(now)
                if seq not in commit:
                    i = block.find(CREATED_AT)
                    if i >= 0:
                        i += len(CREATED_AT)
                        stamp = block[i : block.find(b'"', i)].decode()
                        commit[seq] = datetime.fromisoformat(stamp).timestamp()
            elif block.startswith(b":"):
                continue  # keep-alive comment
            else:
                self.control(block)

    def control(self, block: bytes) -> None:
        name = b""
        data = b""
        for line in block.split(b"\n"):
            if line.startswith(b"event: "):
                name = line[7:]
            elif line.startswith(b"data: "):
                data = line[6:]
        if name == b"connected":
            with contextlib.suppress(ValueError, IndexError):
                self.connected_seq = int(data.split(b":", 1)[1].strip(b" }"))
        elif name in (b"overflow", b"reset", b"error"):
            self.closed_reason = f"server event {name.decode()}: {data.decode(errors='replace')}"


class WSSubscriber(Subscriber):
    kind = "ws"
    offer_deflate = False  # what browsers do: offer permessage-deflate (RFC 7692)

    def __init__(self, rec: Recorder, host: str, port: int, path: str) -> None:
        super().__init__(rec, host, port, path)
        self.key = base64.b64encode(os.urandom(16)).decode()
        self.close_code: int | None = None
        self.inflate: Any = None  # zlib decompressobj once deflate is negotiated
        self.takeover = True

    def request(self) -> bytes:
        ext = (
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
            if self.offer_deflate
            else ""
        )
        return (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {self.key}\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n"
        ).encode()

    def check_head(self, status: bytes, head: bytes) -> str | None:
        if not status.startswith(b"HTTP/1.1 101"):
            return f"HTTP status {status.decode(errors='replace')}"
        if b"permessage-deflate" in head:
            self.inflate = zlib.decompressobj(-15)
            self.takeover = b"server_no_context_takeover" not in head
        return None

    def inflated(self, payload: bytes) -> bytes:
        if not self.takeover:
            self.inflate = zlib.decompressobj(-15)
        data: bytes = self.inflate.decompress(payload + b"\x00\x00\xff\xff")
        return data

    def send_frame(self, opcode: int, payload: bytes) -> None:
        # Client frames must be masked; an all-zero key leaves the payload as it is.
        assert len(payload) < 126
        if self.transport is not None and not self.transport.is_closing():
            header = bytes((0x80 | opcode, 0x80 | len(payload))) + b"\0\0\0\0"
            self.transport.write(header + payload)

    def on_body(self, data: bytes, now: float) -> None:
        buf = self.buf + data if self.buf else data
        pos, n = 0, len(buf)
        commit = self.rec.commit
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if b1 & 0x80:
                self.fail("masked frame from the server")
                return
            end = pos + head + length
            if end > n:
                break
            payload = buf[pos + head : end]
            pos = end
            opcode = b0 & 0x0F
            if opcode == 2:
                if b0 & 0x40:  # RSV1: compressed with permessage-deflate
                    payload = self.inflated(payload)
                ev = pb.DomainEvent.FromString(payload)
                seq = ev.seq
                self.seqs.append(seq)
                self.times.append(now)
                if seq not in commit and ev.HasField("item"):
                    ts = ev.item.created_at
                    commit[seq] = ts.seconds + ts.nanos / 1e9
            elif opcode == 9:  # ping
                self.send_frame(0xA, payload)
            elif opcode == 8:  # close
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                reason = payload[2:].decode(errors="replace")
                self.closed_reason = f"ws close {self.close_code} {reason}".strip()
                self.send_frame(0x8, payload[:2])
                if self.transport is not None:
                    self.transport.close()
                break
            elif opcode == 0xA:
                pass
            else:
                self.fail(f"unexpected ws opcode {opcode} (fin={b0 >> 7})")
                return
        self.buf = buf[pos:] if pos < n else b""


# -- the process ----------------------------------------------------------------------------


class Client:
    def __init__(self, host: str, port: int, token: str, name: str, deflate: bool) -> None:
        self.host, self.port, self.token, self.name = host, port, token, name
        WSSubscriber.offer_deflate = deflate
        self.rec = Recorder()
        self.failures: Counter[str] = Counter()

    async def open_one(self, cls: type[Subscriber], path: str, limit: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(limit):
                _, sub = await loop.create_connection(
                    lambda: cls(self.rec, self.host, self.port, path), self.host, self.port
                )
                await sub.ready
        except (OSError, ConnectionError, TimeoutError) as exc:
            self.failures[f"{cls.kind}: {type(exc).__name__}: {str(exc)[:80]}"] += 1
            return
        self.rec.subs.append(sub)

    async def open(self, sse: int, ws: int, concurrency: int, limit: float) -> dict[str, Any]:
        """Open the subscribers, `concurrency` handshakes at a time, each within `limit` s."""
        started = time.monotonic()
        sem = asyncio.Semaphore(concurrency)
        token = self.token

        async def one(cls: type[Subscriber], path: str) -> None:
            async with sem:
                await self.open_one(cls, path, limit)

        # Interleave the kinds so both land on every worker in similar proportions.
        jobs: list[tuple[type[Subscriber], str]] = []
        for i in range(max(sse, ws)):
            if i < sse:
                jobs.append((SSESubscriber, f"/api/events?token={token}"))
            if i < ws:
                jobs.append((WSSubscriber, f"/ws/items?token={token}"))
        await asyncio.gather(*(one(cls, path) for cls, path in jobs))
        return {
            **self.status(),
            "seconds": round(time.monotonic() - started, 3),
            "failures": dict(self.failures),
        }

    def status(self) -> dict[str, Any]:
        subs = self.rec.subs
        open_ = [s for s in subs if s.closed_reason is None]
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "name": self.name,
            "pid": os.getpid(),
            "held": len(subs),
            "open": len(open_),
            "open_sse": sum(1 for s in open_ if s.kind == "sse"),
            "open_ws": sum(1 for s in open_ if s.kind == "ws"),
            "ws_deflate": sum(
                1 for s in open_ if isinstance(s, WSSubscriber) and s.inflate is not None
            ),
            "failed": sum(self.failures.values()),
            "closed": dict(Counter(s.closed_reason for s in subs if s.closed_reason)),
            "cpu_seconds": ru.ru_utime + ru.ru_stime,
            "maxrss_kb": ru.ru_maxrss,
        }

    async def drain(self, start_seq: int, final_seq: int, limit: float) -> dict[str, Any]:
        """Wait (bounded) until every open subscriber saw `final_seq`, then summarise.

        `lost` counts from the first seq a subscriber saw (the issue's definition);
        `lost_from_start` from `start_seq`, the store's seq before the writes began."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            behind = [
                s
                for s in self.rec.subs
                if s.closed_reason is None and (not s.seqs or s.seqs[-1] < final_seq)
            ]
            if not behind:
                break
            await asyncio.sleep(0.05)
        drained_at = time.time()
        commit = self.rec.commit
        latencies = array("d")
        per_sub = []
        missing_commit = 0
        for s in self.rec.subs:
            seqs = s.seqs
            if seqs:
                first = seqs[0]
                unique = {q for q in seqs if first <= q <= final_seq}
                expected = max(0, final_seq - first + 1)
                lost = expected - len(unique)
                dups = len(seqs) - len(set(seqs))
                out_of_order = sum(1 for a, b in itertools.pairwise(seqs) if b <= a)
            else:
                first, lost, dups, out_of_order = None, None, 0, 0
            in_window = {q for q in seqs if start_seq < q <= final_seq}
            lost_from_start = (final_seq - start_seq) - len(in_window)
            for q, t in zip(seqs, s.times, strict=True):
                c = commit.get(q)
                if c is None:
                    missing_commit += 1
                else:
                    latencies.append(t - c)
            per_sub.append(
                {
                    "kind": s.kind,
                    "received": len(seqs),
                    "first": first,
                    "last": seqs[-1] if seqs else None,
                    "connected_seq": s.connected_seq,
                    "lost": lost,
                    "lost_from_start": lost_from_start,
                    "dups": dups,
                    "out_of_order": out_of_order,
                    "closed": s.closed_reason,
                }
            )
        return {
            **self.status(),
            "drained_at": drained_at,
            "last_receipt": max((s.times[-1] for s in self.rec.subs if s.times), default=0.0),
            "final_seq": final_seq,
            "per_sub": per_sub,
            "latencies": latencies.tobytes(),
            "missing_commit": missing_commit,
        }

    def close(self) -> None:
        for s in self.rec.subs:
            s.close()


async def serve(conn: Connection, host: str, port: int, token: str, name: str) -> None:
    loop = asyncio.get_running_loop()
    client = Client(host, port, token, name, WSSubscriber.offer_deflate)
    inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def readable() -> None:
        try:
            inbox.put_nowait(conn.recv())
        except (EOFError, OSError):
            inbox.put_nowait(("close", None))
            loop.remove_reader(conn.fileno())

    loop.add_reader(conn.fileno(), readable)

    def reply(message: tuple[str, Any]) -> None:
        # uvloop made the pipe non-blocking for add_reader; a large answer must not EAGAIN.
        os.set_blocking(conn.fileno(), True)
        conn.send(message)

    while True:
        cmd, arg = await inbox.get()
        if cmd == "deflate":
            client = Client(host, port, token, name, bool(arg))
            reply(("deflate", None))
        elif cmd == "open":
            reply(("opened", await client.open(**arg)))
        elif cmd == "status":
            reply(("status", client.status()))
        elif cmd == "drain":
            reply(("drained", await client.drain(**arg)))
        elif cmd == "reset":
            client.close()
            await asyncio.sleep(0.2)
            client = Client(host, port, token, name, WSSubscriber.offer_deflate)
            reply(("reset", None))
        elif cmd == "close":
            summary = client.status()
            client.close()
            await asyncio.sleep(0.2)  # let the aborts go out
            with contextlib.suppress(OSError, BrokenPipeError):
                reply(("closed", summary))
            return


def main(conn: Connection, host: str, port: int, token: str, name: str) -> None:
    """multiprocessing target."""
    raise_nofile()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency of uvicorn[standard]
        asyncio.run(serve(conn, host, port, token, name))
    else:
        uvloop.run(serve(conn, host, port, token, name))
