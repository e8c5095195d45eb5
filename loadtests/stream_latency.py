"""`python -m loadtests.stream_latency`: commit -> receipt latency of SSE streams at a low
write rate, in one process (uvicorn with the production options and uvloop, the embedded
store, a memory backplane), so that what the worker adds is not lost in a shared machine's
noise. Run it in two checkouts, interleaved, to compare them.

`--subscribers` raw SSE clients on the same event loop; `--rate` creates/s through the store
for `--seconds`; the commit time is each item's `updated_at` (as in loadtests.fanout).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from datetime import datetime
from typing import Any

import uvloop

from loadtests.served import served
from service.pb import duckcast_pb2 as pb

UPDATED_AT = re.compile(rb'"updated_at":"([^"]+)"')


async def measure(subscribers: int, rate: float, seconds: float) -> list[float]:
    async with served("latency") as (app, port, user_id, token):
        return await _measure(app, port, user_id, token, subscribers, rate, seconds)


async def _measure(
    app: Any, port: int, user_id: int, token: str, subscribers: int, rate: float, seconds: float
) -> list[float]:
    store = app.state.store
    lags: list[float] = []

    async def subscriber() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
        )
        while data := await reader.read(65536):
            now = time.time()
            for stamp in UPDATED_AT.findall(data):
                committed = datetime.fromisoformat(stamp.decode().replace("Z", "+00:00"))
                lags.append(now - committed.timestamp())

    clients = [asyncio.create_task(subscriber()) for _ in range(subscribers)]
    while len(app.state.ring) < subscribers:  # noqa: ASYNC110  (the ring has no event for it)
        await asyncio.sleep(0.05)
    start, n = time.monotonic(), 0
    while time.monotonic() - start < seconds:
        await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
        await store.create_items(user_id, [pb.ItemCreate(title=f"t{n}")])
        n += 1
    await asyncio.sleep(0.5)
    for client in clients:
        client.cancel()
    return sorted(lags)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10.0, help="creates/s")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    lags = uvloop.run(measure(args.subscribers, args.rate, args.seconds))

    def ms(q: float) -> float:
        return lags[int(q * (len(lags) - 1))] * 1000

    print(
        f"{len(lags)} deliveries: commit -> receipt p50 {ms(0.5):.1f} ms, p90 {ms(0.9):.1f} ms, "
        f"p99 {ms(0.99):.1f} ms, max {lags[-1] * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
