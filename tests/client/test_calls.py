"""The client's request rules against a scripted HTTP peer: which calls are retried and when,
typed errors with the server's status and detail, the headers of the contract (Accept,
Content-Type, Authorization, Idempotency-Key, If-Match), and sessions held by token only."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator

import httpx
import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from service.client import (
    AsyncClient,
    Client,
    NotFound,
    ProtocolError,
    Retry,
    ServiceUnavailable,
    TooManyRequests,
    TransportError,
    Unprocessable,
)
from service.client.codec import decode
from service.client.errors import BY_STATUS, ApiError, ServerError, api_error
from service.client.stream import Disconnected, sse_event
from service.pb import duckcast_pb2 as pb
from tests.client.fakes import Recorder

FAST = Retry(backoff=0.0)  # no waiting between tries: these tests count tries, not time
ITEM = pb.Item(id=7, title="t", status="active", version=3)


def proto(message: pb.Item | pb.Error, status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(
        status,
        content=message.SerializeToString(),
        headers={"content-type": "application/protobuf", **headers},
    )


def error(status: int, detail: str = "nope", **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"detail": detail}, headers=headers)


def client(answers: list[httpx.Response | Exception], **options: object) -> tuple[Client, Recorder]:
    seen = Recorder()
    api = Client(
        "http://fake",
        token="tok",
        retry=options.pop("retry", FAST),  # type: ignore[arg-type]
        http={"transport": seen(iter(answers))},
        **options,  # type: ignore[arg-type]
    )
    return api, seen


def test_idempotent_calls_are_retried_until_an_answer() -> None:
    """GET after 503, 502 and a dropped connection: four tries, the item."""
    read_error = httpx.ReadError("connection reset")
    api, seen = client([error(503), error(502), read_error, proto(ITEM)])
    assert api.get_item(7) == ITEM
    assert len(seen.requests) == 4


def test_retries_stop_after_the_attempts_allowed() -> None:
    api, seen = client([error(503, "store unavailable")] * 3, retry=Retry(attempts=3, backoff=0))
    with pytest.raises(ServiceUnavailable) as caught:
        api.stats()
    assert caught.value.status == 503 and caught.value.detail == "store unavailable"
    assert len(seen.requests) == 3


def test_a_plain_post_is_not_sent_twice_when_its_outcome_is_unknown() -> None:
    """POST /api/items without an Idempotency-Key: a 503 (the write may have committed) or a
    connection lost after sending is final."""
    api, seen = client([error(503)])
    with pytest.raises(ServiceUnavailable):
        api.create_item("once")
    api, seen = client([httpx.ReadError("reset")])
    with pytest.raises(TransportError):
        api.create_item("once")
    assert len(seen.requests) == 1


def test_a_post_that_never_left_is_retried() -> None:
    """A connection refused sent nothing: even a plain POST is tried again."""
    api, seen = client([httpx.ConnectError("refused"), proto(ITEM, 201)])
    assert api.create_item("t") == ITEM
    assert len(seen.requests) == 2


def test_a_post_with_an_idempotency_key_is_retried_with_the_same_key() -> None:
    api, seen = client([error(503), httpx.ReadError("reset"), proto(ITEM, 201)])
    assert api.create_item("t", idempotency_key="k-1") == ITEM
    assert [r.headers["idempotency-key"] for r in seen.requests] == ["k-1"] * 3
    api, seen = client([error(504), proto(pb.Item(), 201)])
    api.bulk_create([{"title": "a"}], idempotency_key="k-2")
    assert [r.headers["idempotency-key"] for r in seen.requests] == ["k-2"] * 2


def test_a_retried_delete_that_finds_nothing_had_deleted_it() -> None:
    """DELETE whose first try was lost and whose retry answers 404: the first try took."""
    api, seen = client([httpx.ReadError("reset"), error(404, "item 7 not found")])
    assert api.delete_item(7) is None
    assert len(seen.requests) == 2
    api, seen = client([error(404, "item 7 not found")])
    with pytest.raises(NotFound) as caught:
        api.delete_item(7)
    assert str(caught.value) == "item 7 not found (HTTP 404)"


def test_retry_after_is_followed_or_raised() -> None:
    """429 with `Retry-After: 0` is retried; one longer than `max_retry_after` is raised at
    once, carrying the delay."""
    api, seen = client([error(429, **{"Retry-After": "0"}), proto(ITEM)])
    assert api.get_item(7) == ITEM
    api, seen = client([error(429, "slow down", **{"Retry-After": "3600"})])
    with pytest.raises(TooManyRequests) as caught:
        api.get_item(7)
    assert caught.value.retry_after == 3600.0
    assert len(seen.requests) == 1


def test_contract_headers_in_each_format() -> None:
    """protobuf by default (Accept and Content-Type `application/protobuf`), JSON on request;
    If-Match carries the quoted version; the bearer token goes on every call but login."""
    api, seen = client([proto(ITEM)] * 2)
    api.patch_item(7, status="completed", if_match=3)
    api.update_item(7, priority=5, if_match=4)
    patch, put = seen.requests
    assert patch.method == "PATCH" and put.method == "PUT"
    assert patch.headers["accept"] == patch.headers["content-type"] == "application/protobuf"
    assert pb.ItemUpdate.FromString(patch.content) == pb.ItemUpdate(status="completed")
    assert patch.headers["if-match"] == '"3"' and put.headers["if-match"] == '"4"'
    assert patch.headers["authorization"] == "Bearer tok"

    body = orjson.dumps({"id": 7, "title": "t", "status": "active", "version": 3})
    api, seen = client(
        [httpx.Response(200, content=body, headers={"content-type": "application/json"})],
        format="json",
    )
    assert api.patch_item(7, priority=0) == ITEM
    sent = seen.requests[0]
    assert sent.headers["accept"] == sent.headers["content-type"] == "application/json"
    assert orjson.loads(sent.content) == {"priority": 0}  # a set zero is sent, unset fields not


def test_login_keeps_the_token_and_no_cookie() -> None:
    """login() sets `token` from the answer (the session cookie it also sets is not kept, so
    logout() really signs the client out); logout() clears it."""
    login = pb.LoginResponse(token="fresh", token_type="bearer", user=pb.User(id=1))
    cookie = {"set-cookie": "duckcast_session=fresh; Path=/; HttpOnly"}
    api, seen = client([proto(login, **cookie), proto(pb.User(id=1)), httpx.Response(204)])
    api.token = None
    api.login("alice", "pw")
    assert api.token == "fresh"
    api.me()
    api.logout()
    assert api.token is None
    assert "authorization" not in seen.requests[0].headers
    assert seen.requests[1].headers["authorization"] == "Bearer fresh"
    assert "cookie" not in seen.requests[1].headers


def test_errors_carry_status_and_detail_in_either_format() -> None:
    api, _ = client([proto(pb.Error(code=422, message="priority: too big"), 422)])
    with pytest.raises(Unprocessable) as caught:
        api.create_item("t", priority=500)
    assert (caught.value.status, caught.value.detail) == (422, "priority: too big")
    api, _ = client(
        [httpx.Response(502, text="<html><b>Bad Gateway</b></html>")], retry=Retry(attempts=1)
    )
    with pytest.raises(ServerError) as server:
        api.stats()
    assert server.value.status == 502 and "Bad Gateway" in server.value.detail


def test_the_async_client_follows_the_same_rules() -> None:
    """Same retry and session rules from AsyncClient (one shared implementation)."""

    async def run() -> None:
        seen = Recorder()
        answers: Iterator[httpx.Response | Exception] = iter(
            [error(503), proto(ITEM, 201), error(503)]
        )
        async with AsyncClient(
            "http://fake", token="tok", retry=FAST, http={"transport": seen(answers)}
        ) as api:
            assert await api.create_item("t", idempotency_key="k") == ITEM
            with pytest.raises(ServiceUnavailable):
                await api.create_item("t")  # no key: not retried
        assert len(seen.requests) == 3

    asyncio.run(run())


def test_every_error_status_has_its_class() -> None:
    for status, cls in BY_STATUS.items():
        assert isinstance(api_error(status, b"{}", "application/json", {}), cls)
    assert type(api_error(418, b"", "", {})) is ApiError
    assert type(api_error(507, b"", "", {})) is ServerError


# -- whatever a server answers, the client raises one of its own errors ----------------------

MEDIA = st.sampled_from(
    ["application/json", "application/protobuf", "text/html", "", "application/x-protobuf"]
)


@given(content=st.binary(max_size=300), media=MEDIA, status=st.integers(400, 599))
def test_any_error_body_becomes_a_typed_error(content: bytes, media: str, status: int) -> None:
    err = api_error(status, content, media, {"retry-after": "soon"})
    assert isinstance(err, ApiError) and err.status == status
    assert isinstance(err.detail, str) and err.detail
    assert err.retry_after is None  # not a number of seconds: no advice


@given(content=st.binary(max_size=300), media=MEDIA)
@example(content=b"0", media="application/json")  # json_format raised TypeError on a non-object
def test_any_success_body_decodes_or_raises_protocol_error(content: bytes, media: str) -> None:
    with contextlib.suppress(ProtocolError):
        assert isinstance(decode(content, media, pb.Item), pb.Item)


JSON_OBJECTS = st.dictionaries(
    st.sampled_from(["id", "title", "priority", "x"]),
    st.one_of(st.integers(), st.text(max_size=5), st.none()),
).map(json.dumps)


@given(
    name=st.sampled_from(["item_created", "item_updated", "item_deleted", "reset", "ping"]),
    data=st.one_of(st.text(max_size=80), JSON_OBJECTS),
    last_id=st.one_of(st.text(max_size=8), st.integers(-5, 10**20).map(str)),
)
def test_any_sse_event_is_an_event_or_a_protocol_error(name: str, data: str, last_id: str) -> None:
    try:
        event = sse_event(name, data, last_id)
    except (ProtocolError, Disconnected):
        return
    assert event is None or isinstance(event, pb.DomainEvent)
