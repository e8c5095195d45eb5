from __future__ import annotations

import httpx

from tests.conftest import RedisServer, signup


async def test_create_then_read_back(client: httpx.AsyncClient) -> None:
    """An acknowledged create is readable by id and listed, in JSON."""
    headers = await signup(client, "smoke")
    r = await client.post("/api/items", json={"title": "hello"}, headers=headers)
    assert r.status_code == 201
    item = r.json()
    r = await client.get(f"/api/items/{item['id']}", headers=headers)
    assert r.json() == item
    r = await client.get("/api/items", headers=headers)
    assert [i["id"] for i in r.json()["items"]] == [item["id"]]


def test_redis_fixture_restarts_on_same_port(redis_server: RedisServer) -> None:
    """The fixture's server can be stopped and started again at the same URL."""
    import redis

    url = redis_server.url
    redis_server.stop()
    redis_server.start()
    assert redis_server.url == url
    assert redis.Redis.from_url(url).ping()
