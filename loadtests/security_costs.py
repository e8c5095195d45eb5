"""`python -m loadtests.security_costs`: what the security measures cost, in medians of 5.

1. A worker's revocation poll: `revocations_since(last)` over the real socket transport to a
   `duckcast store` process (handshake done), with 0 and 1,000 revocations held; client CPU
   and wall time per call. A worker polls every DUCKCAST_REVOCATION_POLL_MS (250 ms).
2. Log redaction: CPU to create one uvicorn access-log record (five args) without and with
   service.redaction installed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from service import redaction
from service.config import Settings
from service.keys import load_keys
from service.storeclient.socket import SocketStoreClient

CALLS = 2000


async def poll_cost(sock: Path, key: bytes) -> None:
    client = SocketStoreClient(f"unix:{sock}", key=key)
    for _ in range(200):  # warm up (and connect)
        await client.revocations_since(0)
    for held in (0, 1000):
        for i in range(held):
            await client.revoke_token(f"bench-{i}", 2**40)
        last = (await client.revocations_since(0)).last_rev
        runs = []
        for _ in range(5):
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(CALLS):
                await client.revocations_since(last)
            runs.append(((time.process_time() - cpu) / CALLS, (time.perf_counter() - wall) / CALLS))
        cpu_us, wall_us = (sorted(r[i] for r in runs)[2] * 1e6 for i in (0, 1))
        print(f"revocation poll, {held} held: {cpu_us:.0f} us worker CPU, {wall_us:.0f} us wall")
    await client.close()


def with_store() -> None:
    data = Path(tempfile.mkdtemp(prefix="dc-", dir="/tmp"))
    keys = load_keys(Settings(data_dir=data))
    sock = data / "store.sock"
    env = dict(os.environ, DUCKCAST_SECRET_KEY_FILE=str(data / "secret_key"))
    cmd = [sys.executable, "-m", "service.cli", "store", "--listen", f"unix:{sock}"]
    store = subprocess.Popen(
        [*cmd, "--data-dir", str(data)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while not sock.exists():
            time.sleep(0.05)
        asyncio.run(poll_cost(sock, keys.store))
    finally:
        store.terminate()
        store.wait(30)


def record_cost() -> float:
    logger = logging.getLogger("uvicorn.access")
    args = ("127.0.0.1:50000", "GET", "/api/items?page=1&limit=20", "1.1", 200)
    runs = []
    for _ in range(5):
        started = time.process_time()
        for _ in range(20_000):
            logger.makeRecord(
                logger.name, logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d', args, None
            )
        runs.append((time.process_time() - started) / 20_000 * 1e6)
    return sorted(runs)[2]


def main() -> None:
    print(f"load average: {Path('/proc/loadavg').read_text().split()[:3]}")
    with_store()
    plain = record_cost()
    redaction.install()
    print(f"access-log record: {plain:.1f} us plain, {record_cost():.1f} us redacted")


if __name__ == "__main__":
    main()
