"""`Duckcast-Seq`: every write answers the seq it committed at; reads accept it (and reject a
malformed one with 422); the worker read cache answers reads and can be turned off."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from service.config import Settings
from tests.api.conftest import Account, running


async def page_seq(client: httpx.AsyncClient, who: Account) -> int:
    r = await client.get("/api/items", params={"q": "x"}, headers=who.headers)  # the store's
    assert r.status_code == 200, r.text
    seq: int = r.json()["seq"]
    return seq


async def test_every_write_answers_its_seq(client: httpx.AsyncClient, alice: Account) -> None:
    """Create, bulk, PUT, PATCH and DELETE answer `Duckcast-Seq`: the store's seq right after
    the write (one client, nothing else writing: exactly the page's seq after it)."""
    h = alice.headers
    answers = [
        await client.post("/api/items", json={"title": "a"}, headers=h),
        await client.post("/api/items/bulk", json={"items": [{"title": "b"}] * 3}, headers=h),
        await client.put("/api/items/1", json={"title": "c"}, headers=h),
        await client.patch("/api/items/1", json={"priority": 4}, headers=h),
        await client.delete("/api/items/2", headers=h),
    ]
    seqs = []
    for r in answers:
        assert r.status_code in (200, 201, 204), r.text
        seqs.append(int(r.headers["duckcast-seq"]))
    assert seqs == [1, 4, 5, 6, 7]
    assert await page_seq(client, alice) == 7
    # a rejected write answers no seq
    r = await client.patch("/api/items/2", json={"priority": 4}, headers=h)
    assert r.status_code == 404 and "duckcast-seq" not in r.headers


@pytest.mark.parametrize("value", ["", "x", "-1", "1.5", "١٢", "99999999999999999999"])
@pytest.mark.parametrize("path", ["/api/items/1", "/api/items", "/api/items?limit=5"])
async def test_a_malformed_seq_is_422(
    client: httpx.AsyncClient, alice: Account, path: str, value: str
) -> None:
    await client.post("/api/items", json={"title": "a"}, headers=alice.headers)
    headers = {**alice.headers, "Duckcast-Seq": value}
    r = await client.get(path, headers={k: v.encode() for k, v in headers.items()})
    assert r.status_code == 422, r.text
    assert "Duckcast-Seq" in r.json()["detail"]


async def test_reads_presenting_their_seq_see_the_write(
    client: httpx.AsyncClient, alice: Account
) -> None:
    """Read-your-writes through the app with the cache on: each read presents the write's
    seq and sees it, also the cached first page."""
    for n in range(20):
        r = await client.post("/api/items", json={"title": f"i{n}"}, headers=alice.headers)
        want = {**alice.headers, "Duckcast-Seq": r.headers["duckcast-seq"]}
        got = await client.get(f"/api/items/{r.json()['id']}", headers=want)
        assert got.json() == r.json()
        page = (await client.get("/api/items", params={"limit": 3}, headers=want)).json()
        assert page["items"][0] == r.json() and page["seq"] == int(want["Duckcast-Seq"])
        u = await client.patch(
            f"/api/items/{r.json()['id']}", json={"priority": n}, headers=alice.headers
        )
        want["Duckcast-Seq"] = u.headers["duckcast-seq"]
        assert (await client.get(f"/api/items/{u.json()['id']}", headers=want)).json() == u.json()


async def test_the_cache_can_be_turned_off(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "d", read_cache_bytes=0)
    async with running(settings) as small:
        assert small.app.state.read_cache is None
        user = await small.app.state.store.create_user("carol", "x")
        token = small.app.state.signer.issue(user.id).value
        h = {"Authorization": f"Bearer {token}"}
        r = await small.client.post("/api/items", json={"title": "a"}, headers=h)
        assert r.status_code == 201 and r.headers["duckcast-seq"] == "1"
        got = await small.client.get("/api/items/1", headers={**h, "Duckcast-Seq": "1"})
        assert got.json() == r.json()
