"""A create's store call costs the worker's event loop as few turns as it can: under fan-out
every turn of a worker's loop waits behind a fan-out turn (~1 ms, more on busy cores), which is
how POST latency grew with subscribers (README, Fan-out: "Where a POST's time goes"). So the
request leaves in the turn after the call (the turn that coalesces a loop turn's creates), and
the answer is read as it arrives (in the socket's data_received, not by a reader task) and
reaches the caller in the next turn.

The store here is a scripted peer on a real Unix socket (it answers at once, so the turns
counted are the client's own). In asyncio's loop and in uvloop's (the workers') a byte
written to a Unix socket is seen by the next turn's poll, so the counts are exact."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvloop

from service.pb import store_pb2 as spb
from service.storeclient.handshake import store_handshake
from service.storeclient.protocol import encode_frame, read_frame
from service.storeclient.socket import SocketStoreClient
from tests.store.conftest import STORE_KEY, creates


class Turns:
    """Counts the loop's turns: a task that runs once in every turn."""

    def __init__(self) -> None:
        self.n = 0
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.n += 1
            await asyncio.sleep(0)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@dataclass
class Seen:
    """The turn the store read each create request in, and the turn it answered it in."""

    read: list[int] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)


@contextlib.asynccontextmanager
async def scripted_store(path: Path, turns: Turns) -> AsyncIterator[Seen]:
    seen = Seen()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            assert await store_handshake(reader, writer, STORE_KEY) is None
            while True:
                req = spb.StoreRequest.FromString(await read_frame(reader))
                resp = spb.StoreResponse(id=req.id)
                if req.WhichOneof("op") == "create_items":
                    seen.read.append(turns.n)
                    resp.items.items.add(id=1, title=req.create_items.items[0].title)
                    resp.seq = 1
                else:
                    resp.pong.seq = 0
                writer.write(encode_frame(resp.SerializeToString()))
                if req.WhichOneof("op") == "create_items":
                    seen.answered.append(turns.n)
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(serve, path=str(path))
    try:
        yield seen
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop])
def test_a_create_leaves_in_the_turn_after_the_call_and_its_answer_needs_one_more(
    sock_dir: Path, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    """Under asyncio's loop, and uvloop's (the workers')."""
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(round_trips(sock_dir / "scripted.sock"))


async def round_trips(path: Path) -> None:
    turns = Turns()
    async with scripted_store(path, turns) as seen:
        client = SocketStoreClient(f"unix:{path}", key=STORE_KEY)
        try:
            await client.ping()  # connected: the create below takes the direct path
            for attempt in range(3):
                called = turns.n
                items, seq = await client.create_items_at(1, creates(f"t{attempt}"))
                back = turns.n
                assert [i.title for i in items.items] == [f"t{attempt}"] and seq == 1
                # turn +1: the coalescing callback writes the frame; +2: the store's poll sees
                # it and wakes its reader, +3: which reads it (the peer's turns, not ours)
                assert seen.read[-1] - called <= 3, (called, seen.read)
                # the answer: the client's poll reads it and sets the create's result (+1), and
                # the caller runs in the next turn (+2)
                assert back - seen.answered[-1] <= 2, (seen.answered, back)
        finally:
            await client.close()
    await turns.stop()
