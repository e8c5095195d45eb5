"""`python -m loadtests.store_inprocess`: the store engine's CPU per create, in one process.

No socket, no worker, no Redis: the engine (writer thread, real DuckDB file) answers
`CreateMany` requests as the store server would, `--requests` at a time of `--creates` single-item
creates each (two workers' coalesced creates, by default), each request serialized and parsed as
on the wire and its answer serialized. Prints the minimum and median over rounds of CPU time per
create (process time: the writer thread counts too) and the writes per group commit.
`--calls` also counts the Python function calls per create on the engine's event loop (cProfile
sees that thread only), a figure the machine's load does not move. `--checkout DIR` runs another
checkout's `service` package (e.g. /tmp/duckcast-base), so two versions are compared with the
same driver. `--fsync` also times what a log as the durable point would pay per group commit
instead of DuckDB's: one `write` of a batch's serialized events and one `fdatasync`.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any


def _service(checkout: Path | None) -> tuple[ModuleType, ModuleType]:
    if checkout is not None:
        sys.path.insert(0, str(checkout.resolve()))
    engine = importlib.import_module("service.store.engine")
    spb = importlib.import_module("service.pb.store_pb2")
    return engine, spb


async def measure(args: argparse.Namespace) -> tuple[list[float], float, float | None]:
    engine_mod, spb = _service(args.checkout)
    engine = engine_mod.StoreEngine(
        Path(tempfile.mkdtemp()) / "store.duckdb", duckdb_threads=1, commit_window=0.002
    )
    await asyncio.to_thread(engine.open)
    sizes: list[int] = []
    engine.add_batch_observer(lambda size, seconds: sizes.append(size))
    made = await engine.handle(
        spb.StoreRequest(create_user=spb.CreateUser(username="bench", password_hash="x"))
    )
    op = spb.CreateItems(actor_id=made.user.id)
    op.items.add(title="bench item")
    wire = spb.StoreRequest(create_many=spb.CreateMany(creates=[op] * args.creates))
    frame = wire.SerializeToString()

    async def one() -> bytes:
        def committing() -> bool:
            return True

        resp = await engine.handle(spb.StoreRequest.FromString(frame), committing)
        answer: bytes = resp.SerializeToString()
        return answer

    async def turn() -> None:
        await asyncio.gather(*(one() for _ in range(args.requests)))

    per_round = args.turns * args.requests * args.creates
    try:
        for _ in range(20):  # warm-up: imports, caches, the first checkpoint
            await turn()
        sizes.clear()
        cpu: list[float] = []
        for _ in range(args.rounds):
            started = time.process_time()
            for _ in range(args.turns):
                await turn()
            cpu.append((time.process_time() - started) / per_round * 1e6)
        batch = sum(sizes) / max(len(sizes), 1)
        calls = None
        if args.calls:
            profile = cProfile.Profile()
            profile.enable()
            for _ in range(args.turns):
                await turn()
            profile.disable()
            stats: Any = pstats.Stats(profile)
            calls = stats.total_calls / per_round
        return cpu, batch, calls
    finally:
        await asyncio.to_thread(engine.close)


def log_append_cost(batch: int, rounds: int = 200) -> tuple[float, float]:
    """Median CPU and wall microseconds of appending `batch` serialized events to a file and
    fdatasync-ing it, on the temporary directory's file system."""
    event = b"x" * 160  # about one created item's DomainEvent
    fd, path = tempfile.mkstemp(suffix=".log")
    cpu: list[float] = []
    wall: list[float] = []
    try:
        for _ in range(rounds):
            started, started_cpu = time.perf_counter(), time.thread_time()
            os.write(fd, event * batch)
            os.fdatasync(fd)
            cpu.append((time.thread_time() - started_cpu) * 1e6)
            wall.append((time.perf_counter() - started) * 1e6)
    finally:
        os.close(fd)
        os.unlink(path)
    return statistics.median(cpu), statistics.median(wall)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.store_inprocess")
    parser.add_argument("--requests", type=int, default=2, help="CreateMany requests at a time")
    parser.add_argument("--creates", type=int, default=16, help="creates per request")
    parser.add_argument("--turns", type=int, default=100, help="request groups per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", action="store_true", help="Python calls per create (loop)")
    parser.add_argument("--checkout", type=Path, help="run this checkout's `service` package")
    parser.add_argument("--fsync", action="store_true", help="time a log append + fdatasync")
    args = parser.parse_args(argv)
    cpu, batch, calls = asyncio.run(measure(args))
    where = args.checkout or Path(__file__).resolve().parent.parent
    line = (
        f"store in-process ({where}): CPU per create min {min(cpu):.0f} us, "
        f"median {statistics.median(cpu):.0f} us; {batch:.1f} writes per commit"
    )
    if calls is not None:
        line += f"; {calls:.1f} Python calls per create on the loop"
    print(line)
    if args.fsync:
        batch = args.requests * args.creates
        cpu_us, wall_us = log_append_cost(batch)
        cost = f"{cpu_us:.0f} us CPU, {wall_us:.0f} us wall"
        print(f"log append of {batch} events + fdatasync: {cost}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
