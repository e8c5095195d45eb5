"""An oversized bulk create costs what a bulk at the limit costs, not what its body holds:
the entries are counted before the body is decoded (service.api.bulkbody)."""

from __future__ import annotations

import gc
import time

import httpx
import pytest

from service.pb import duckcast_pb2 as pb
from tests.api.conftest import Account
from tests.api.wire import JSON, PROTOBUF, error_message

MiB = 1024 * 1024
# 16 MiB of BulkCreateRequest holding 8 Mi empty ItemCreate entries (the body), and
# its JSON cousin: decoding either first took 0.3-0.6 s of CPU and 450-640 MB.
PROTOBUF_BOMB = b"\x0a\x00" * (8 * MiB)
JSON_BOMB = b'{"items": [' + b"{}," * (16 * MiB // 3 - 8) + b"{}]}"


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.parametrize(
    ("media", "body"), [(PROTOBUF, PROTOBUF_BOMB), (JSON, JSON_BOMB)], ids=["protobuf", "json"]
)
async def test_an_oversized_bulk_is_refused_with_bounded_cpu_and_memory(
    client: httpx.AsyncClient, alice: Account, media: str, body: bytes
) -> None:
    assert len(body) <= 16 * MiB  # under the body limit: only the entry count refuses it
    headers = {**alice.headers, "Content-Type": media, "Accept": media}
    await client.post("/api/items/bulk", content=body[:64], headers=headers)  # warm up
    gc.collect()
    before, cpu = rss(), time.process_time()
    r = await client.post("/api/items/bulk", content=body, headers=headers)
    cpu = time.process_time() - cpu
    gc.collect()
    grew = rss() - before
    assert r.status_code == 422, r.content[:200]
    assert "at most 1000 items" in error_message(r, media)
    assert cpu < 0.1, f"{cpu * 1000:.0f} ms of CPU to refuse it"
    assert grew < 48 * MiB, f"RSS grew by {grew / MiB:.0f} MiB"  # the body itself is 16 MiB
    assert (await client.get("/api/items", headers=alice.headers)).json()["total"] == 0


async def test_a_bulk_at_the_limit_still_works(client: httpx.AsyncClient, alice: Account) -> None:
    items = [{"title": f"t{n}", "description": "d" * 100} for n in range(1000)]
    r = await client.post("/api/items/bulk", json={"items": items}, headers=alice.headers)
    assert r.status_code == 201, r.text
    body = pb.BulkCreateRequest(items=[pb.ItemCreate(title="p")] * 1000).SerializeToString()
    r = await client.post(
        "/api/items/bulk", content=body, headers={**alice.headers, "Content-Type": PROTOBUF}
    )
    assert r.status_code == 201, r.text
    r = await client.post(
        "/api/items/bulk",
        content=body + pb.BulkCreateRequest(items=[pb.ItemCreate(title="p")]).SerializeToString(),
        headers={**alice.headers, "Content-Type": PROTOBUF},
    )
    assert r.status_code == 422
    assert (await client.get("/api/items", headers=alice.headers)).json()["total"] == 2000


async def test_json_with_more_structure_than_the_limit_allows_is_400(
    client: httpx.AsyncClient, alice: Account
) -> None:
    """README (Additions to the public contract): JSON with more structure than 1,000 items
    could have is 400, refused before it is parsed, even with a single entry (here one
    ItemCreate carrying an array of 40,000 numbers in a field nobody reads)."""
    flat = b"[" + b"0," * 40_000 + b"0]"
    body = b'{"items": [{"title": "t", "extra": ' + flat + b"}]}"
    headers = {**alice.headers, "Content-Type": JSON}
    r = await client.post("/api/items/bulk", content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert "more JSON structure than 1000 items" in error_message(r, JSON)
    assert (await client.get("/api/items", headers=alice.headers)).json()["total"] == 0
