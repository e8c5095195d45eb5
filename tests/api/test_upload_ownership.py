"""Uploads have an owner (recorded in the store): a per-user byte quota and rate, and
`DELETE /api/uploads/{name}` for the owner only. Files stay public by their unguessable URL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from service.config import Settings
from tests.api.conftest import Account, SmallApp, running
from tests.api.wire import JSON, PROTOBUF, error_message


class Limited(SmallApp):
    async def user(self, name: str, password_hash: str) -> Account:
        user = await self.app.state.store.create_user(name, password_hash)
        return Account(user.id, name, self.app.state.signer.issue(user.id).value)

    async def upload(self, who: Account, size: int, media: str = JSON) -> httpx.Response:
        files = {"file": ("f.bin", b"x" * size, "application/octet-stream")}
        return await self.client.post(
            "/api/upload", files=files, headers={**who.headers, "Accept": media}
        )

    def stored(self) -> set[str]:
        return {p.name for p in self.settings.uploads_dir.glob("*")}


@pytest.fixture
async def limited(tmp_path: Path) -> AsyncIterator[Limited]:
    """The app with a 2,500-byte quota and 3 uploads a minute per user."""
    settings = Settings(data_dir=tmp_path / "d", upload_quota_bytes=2500, upload_rate_per_minute=3)
    async with running(settings) as served:
        yield Limited(served.app, served.client, served.settings)


async def test_only_the_owner_deletes_an_upload(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    """DELETE /api/uploads/{name}: 403 for another user (the file stays), 204 for the owner
    (the file is gone: GET 404), then 404; 404 for a name never uploaded; 401 anonymous."""
    r = await client.post(
        "/api/upload", files={"file": ("a.txt", b"mine", "text/plain")}, headers=alice.headers
    )
    name = r.json()["filename"]
    for media in (JSON, PROTOBUF):
        r = await client.delete(f"/api/uploads/{name}", headers={**bob.headers, "Accept": media})
        assert r.status_code == 403
        error_message(r, media)
    assert (await client.delete(f"/api/uploads/{name}")).status_code == 401
    assert (await client.get(f"/uploads/{name}")).content == b"mine"

    assert (await client.delete(f"/api/uploads/{name}", headers=alice.headers)).status_code == 204
    assert (await client.get(f"/uploads/{name}")).status_code == 404
    assert (await client.delete(f"/api/uploads/{name}", headers=alice.headers)).status_code == 404
    unknown = "0123456789abcdef" * 2 + ".txt"
    assert (
        await client.delete(f"/api/uploads/{unknown}", headers=alice.headers)
    ).status_code == 404


async def test_the_byte_quota_is_per_user(limited: Limited, password_hash: str) -> None:
    """Over the quota: 413 in the negotiated format, and no file is written; another user has
    a quota of their own; deleting frees the space."""
    alice, bob = (
        await limited.user("alice", password_hash),
        await limited.user("bob", password_hash),
    )
    first = await limited.upload(alice, 1000)
    second = await limited.upload(alice, 1000)
    assert first.status_code == second.status_code == 201
    stored = limited.stored()
    for media in (JSON, PROTOBUF):
        over = await limited.upload(alice, 600, media)
        assert over.status_code == 413
        assert "quota" in error_message(over, media)
    assert limited.stored() == stored  # nothing written for the refused uploads
    assert (await limited.upload(bob, 1000)).status_code == 201

    name = first.json()["filename"]
    assert (
        await limited.client.delete(f"/api/uploads/{name}", headers=alice.headers)
    ).status_code == 204
    assert (await limited.upload(alice, 600)).status_code == 201


async def test_the_upload_rate_is_per_user(limited: Limited, password_hash: str) -> None:
    """The 4th upload within a minute answers 429 with Retry-After; another user is not
    affected."""
    alice, bob = (
        await limited.user("alice", password_hash),
        await limited.user("bob", password_hash),
    )
    for _ in range(3):
        assert (await limited.upload(alice, 10)).status_code == 201
    for media in (JSON, PROTOBUF):
        r = await limited.upload(alice, 10, media)
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) > 0
        error_message(r, media)
    assert (await limited.upload(bob, 10)).status_code == 201
    assert len(limited.stored()) == 4


async def test_the_owner_is_recorded_in_the_store(
    app: FastAPI, client: httpx.AsyncClient, alice: Account
) -> None:
    """The record (owner, size, type) lives in the store, where every worker sees it: the
    store itself refuses a delete by anyone else."""
    r = await client.post(
        "/api/upload", files={"file": ("a.png", b"\x89PNG", "image/png")}, headers=alice.headers
    )
    result = r.json()
    assert (result["size"], result["content_type"]) == (4, "image/png")
    store = app.state.store
    with pytest.raises(Exception, match="another user"):
        other = await store.create_user("mallory", "h")
        await store.delete_upload(other.id, result["filename"])
    await store.delete_upload(alice.id, result["filename"])
