"""`python -m loadtests.stream_memory`: what one idle change stream holds, by traceback.

One process serves (uvicorn with the production options and uvloop, the embedded store, a
memory backplane); the clients run in a child process, so their objects are not counted.
tracemalloc is started before the app, a few streams of the kind are opened and closed (so
lazy imports and caches are in the baseline), then `--streams` are opened and held until the
ring counts them all and they are parked, and the two snapshots are compared, grouped by
traceback: bytes per stream for each group, largest first.

`--kind sse`, `ws` (JSON frames) or `ws-proto`. tracemalloc sees what Python allocates
(objects, their dicts, bytes buffers, uvloop's Cython objects), not the kernel's socket
buffers nor libuv's own memory: RSS (loadtests.fanout's idle phase) is the figure to quote;
this says where it goes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import multiprocessing
import os
import socket
import time
import tracemalloc
from multiprocessing.connection import Connection
from typing import Any

import uvloop


def request(kind: str, token: str) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n"
    if kind == "sse":
        return f"GET /api/events HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode()
    key = base64.b64encode(os.urandom(16)).decode()
    query = "?format=json" if kind == "ws" else ""
    return (
        f"GET /ws/items{query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"{auth}\r\n"
    ).encode()


def clients(port: int, kind: str, token: str, pipe: Connection) -> None:
    """Child process: open streams on command, hold them, close them all on command."""
    held: list[socket.socket] = []
    while True:
        n = pipe.recv()
        if n < 0:
            return
        if n == 0:
            for s in held:
                s.close()
            held.clear()
            pipe.send(0)
            continue
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(request(kind, token))
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = s.recv(4096)
                if not chunk:
                    raise RuntimeError(f"stream refused: {head[:200]!r}")
                head += chunk
            if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.1 101")):
                raise RuntimeError(f"stream refused: {head[:200]!r}")
            held.append(s)
        pipe.send(len(held))


async def measure(kind: str, streams: int, top: int, frames: int) -> None:
    # not at the top: the spawned client process imports this module and needs no app
    from loadtests.served import served

    async with served("memory") as (app, port, _, token):
        await _measure(app, port, token, kind, streams, top, frames)


async def _measure(
    app: Any, port: int, token: str, kind: str, streams: int, top: int, frames: int
) -> None:
    ring = app.state.ring

    ours, theirs = multiprocessing.Pipe()
    child = multiprocessing.get_context("spawn").Process(
        target=clients, args=(port, kind, token, theirs), daemon=True
    )
    child.start()
    loop = asyncio.get_running_loop()

    async def ask(n: int) -> int:
        ours.send(n)
        result: int = await loop.run_in_executor(None, ours.recv)
        return result

    async def settled(n: int) -> None:
        # every stream subscribed and parked (or waiting), nothing left to run
        while len(ring) != n or len(ring._parked) != n:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for _ in range(5):
            await asyncio.sleep(0.05)

    await ask(20)  # warm-up: imports, caches, free lists
    await settled(20)
    await ask(0)
    await settled(0)
    gc.collect()
    before = tracemalloc.take_snapshot()
    t0 = time.monotonic()
    await ask(streams)
    await settled(streams)
    gc.collect()
    after = tracemalloc.take_snapshot()
    opened = time.monotonic() - t0
    keep = [tracemalloc.Filter(False, tracemalloc.__file__)]
    diff = after.filter_traces(keep).compare_to(before.filter_traces(keep), "traceback")
    total = sum(d.size_diff for d in diff)
    print(
        f"{kind}: {streams} streams held ({opened:.1f} s to open): "
        f"{total / streams / 1024:.2f} KiB per stream in tracemalloc's view"
    )
    shown = 0
    for d in diff:
        if shown >= top:
            break
        if d.size_diff <= 0:
            continue
        shown += 1
        per = d.size_diff / streams
        count = d.count_diff / streams
        print(f"\n{per:8.0f} B  {count:5.2f} blocks/stream")
        for frame in list(d.traceback)[-frames:][::-1]:
            print(f"           {_short(frame.filename)}:{frame.lineno}")
    await ask(-1)
    child.join(5)


def _short(path: str) -> str:
    for mark in ("/site-packages/", "/work/", "/lib/python3"):
        i = path.find(mark)
        if i >= 0:
            return path[i + len(mark) :]
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=("sse", "ws", "ws-proto"), default="sse")
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--top", type=int, default=25, help="groups shown")
    parser.add_argument("--frames", type=int, default=4, help="frames shown per group")
    args = parser.parse_args()
    tracemalloc.start(max(args.frames, 12))
    uvloop.run(measure(args.kind, args.streams, args.top, args.frames))


if __name__ == "__main__":
    main()
