"""service.client against a real `duckcast serve --workers 2` (store process, gunicorn, a
private redis-server): every call of the contract in protobuf and in JSON, with the contract's
errors as typed exceptions, and the README's client example."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from service.client import (
    Client,
    Conflict,
    Forbidden,
    Format,
    NotFound,
    PreconditionFailed,
    Unauthorized,
    Unprocessable,
    item_create,
)
from tests.e2e.client.conftest import PASSWORD, Account, sign_up
from tests.e2e.conftest import DuckcastProcess

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[3]
FORMATS: list[Format] = ["protobuf", "json"]
MEDIA = {"protobuf": "application/protobuf", "json": "application/json"}


# -- every call, both formats -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_call_round_trips(service: DuckcastProcess, fmt: Format) -> None:
    """register, login, me, create, bulk, get, list (and the page iterator), PUT, PATCH,
    delete, stats, upload and logout, with the contract's errors as typed exceptions; every
    answer with a body came in the chosen format."""
    answered: list[str] = []

    def record(response: httpx.Response) -> None:
        if response.status_code != 204:  # every other answer of these calls has a body
            answered.append(response.headers.get("content-type", ""))

    name = f"rt_{fmt}_{uuid.uuid4().hex[:6]}"
    hooks = {"event_hooks": {"response": [record]}}
    with Client(service.url, format=fmt, http=hooks) as api:
        user = api.register(name, PASSWORD)
        assert user.username == name and user.id > 0 and user.created_at.seconds > 0
        with pytest.raises(Conflict) as taken:
            api.register(name, PASSWORD)
        assert taken.value.status == 409
        with pytest.raises(Unauthorized):
            api.login(name, "not the password")
        login = api.login(name, PASSWORD)
        assert login.token_type == "bearer" and login.user == user
        assert login.expires_at.seconds > time.time() and api.token == login.token
        assert api.me() == user

        first = api.create_item("first", description="d", priority=5)
        assert (first.title, first.description, first.status, first.priority) == (
            "first",
            "d",
            "active",
            5,
        )
        assert first.owner_id == user.id and first.version == 1
        assert api.get_item(first.id) == first
        bulk = api.bulk_create(
            [item_create("b1", priority=1), {"title": "b2", "status": "completed"}]
        )
        assert [(i.title, i.status) for i in bulk.items] == [("b1", "active"), ("b2", "completed")]

        put = api.update_item(first.id, title="renamed", if_match=first.version)
        assert (put.title, put.priority, put.version) == ("renamed", 5, 2)
        patch = api.patch_item(first.id, priority=9)
        assert (patch.title, patch.priority, patch.version) == ("renamed", 9, 3)

        page = api.list_items(1, 2, owner_id=user.id)
        assert (page.total, page.pages, page.limit, len(page.items)) == (3, 2, 2, 2)
        assert page.seq > 0
        newest_first = [bulk.items[1].id, bulk.items[0].id, first.id]
        assert [i.id for i in api.iter_items(limit=2, owner_id=user.id)] == newest_first
        assert [i.id for i in api.list_items(owner_id=user.id, q="renamed").items] == [first.id]
        done = api.list_items(owner_id=user.id, status="completed").items
        assert [i.title for i in done] == ["b2"]

        with pytest.raises(Unprocessable) as invalid:
            api.create_item("too important", priority=101)
        assert "priority" in invalid.value.detail
        stats = api.stats()
        assert stats.total >= 3 and stats.completed >= 1

        upload = api.upload(b"hello, duckcast", filename="note.txt")
        assert upload.size == 15 and upload.url.startswith("/uploads/")
        assert httpx.get(service.url + upload.url).content == b"hello, duckcast"

        api.delete_item(bulk.items[0].id)
        with pytest.raises(NotFound) as gone:
            api.get_item(bulk.items[0].id)
        assert gone.value.status == 404

        other = sign_up(service, f"other_{fmt}")
        with Client(service.url, format=fmt, token=other.token) as intruder:
            assert intruder.get_item(first.id) == patch  # anyone signed in may read
            with pytest.raises(Forbidden):
                intruder.patch_item(first.id, title="mine now")
            with pytest.raises(Forbidden):
                intruder.delete_item(first.id)

        api.logout()
        assert api.token is None
        with pytest.raises(Unauthorized):
            api.me()
    assert answered and {media.split(";")[0] for media in answered} == {MEDIA[fmt]}


@pytest.mark.parametrize("fmt", FORMATS)
def test_idempotency_key_and_if_match(
    service: DuckcastProcess, account: Account, fmt: Format
) -> None:
    """The contract's safe retries and lost-update guard, through the client: the same
    Idempotency-Key answers the first item again (another body with it: 422); If-Match with a
    stale version answers 412 (PreconditionFailed) for PUT, PATCH and DELETE."""
    with Client(service.url, format=fmt, token=account.token) as api:
        probe = api.create_item("probe")
        headers = {"Authorization": f"Bearer {account.token}"}
        if "etag" not in httpx.get(f"{service.url}/api/items/{probe.id}", headers=headers).headers:
            pytest.skip("this server has no ETag / If-Match / Idempotency-Key yet (h6-hardening)")
        key = uuid.uuid4().hex
        once = api.create_item("once", priority=4, idempotency_key=key)
        assert api.create_item("once", priority=4, idempotency_key=key) == once
        with pytest.raises(Unprocessable):
            api.create_item("something else", idempotency_key=key)
        stale = once.version
        current = api.update_item(once.id, title="changed", if_match=stale)
        for change in (
            lambda: api.update_item(once.id, title="lost", if_match=stale),
            lambda: api.patch_item(once.id, priority=1, if_match=stale),
            lambda: api.delete_item(once.id, if_match=stale),
        ):
            with pytest.raises(PreconditionFailed) as caught:
                change()
            assert caught.value.status == 412
        api.delete_item(once.id, if_match=current.version)


def test_readme_client_example_runs(service: DuckcastProcess) -> None:
    """The five-line example in the README's "Clients" section runs as written (against this
    server, as the user it signs in as) and prints what it says."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Clients") :]
    example = re.search(r"```python\n(.*?)```", section, re.S)
    assert example is not None
    code = example.group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 6
    user, password = re.search(r'api\.login\("([^"]+)", "([^"]+)"\)', code).groups()  # type: ignore[union-attr]
    with Client(service.url) as api, contextlib.suppress(Conflict):
        api.register(user, password)
    code = code.replace("http://127.0.0.1:8000", service.url)
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert re.fullmatch(r"Buy milk \d+\n", run.stdout), run.stdout
