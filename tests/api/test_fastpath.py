"""The lean handlers of the three hot routes (service.api.routing.LeanRoute, the `_lean_*`
functions of service.api.routes.items) answer exactly what the declared FastAPI endpoints answer.

Generated, not hand-picked: every parameter of the three routes (the item id in the path; page,
limit, owner_id, status, q and unknown names in the query; the body, Content-Type, Accept,
Idempotency-Key and the session in every place it can be) is drawn by hypothesis. Each request
goes once through the app as it is (lean handler first) and once with every lean handler
detached (the declared endpoints alone), against the same store: status, content type, the
headers an answer is read by, and the body must be identical."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from service.api.app import create_app
from service.api.routing import LeanRoute
from service.config import Settings
from service.pb import duckcast_pb2 as pb
from service.wire import ID, INT64_MAX, LIMIT, PAGE, QUERY_MAX_LENGTH, STATUSES
from tests.api.test_any_input import Request, call_http
from tests.api.wire import JSON, PROTOBUF, X_PROTOBUF

MINTED = ("id", "created_at", "updated_at")  # differ between two creates
# The headers a client reads an answer by (the request id differs by design).
COMPARED = (b"content-type", b"etag", b"www-authenticate", b"retry-after", b"cache-control",
            b"x-content-type-options", b"allow", b"location")  # fmt: skip


def edges(low: int, high: int) -> st.SearchStrategy[str]:
    """Integers around a parameter's bounds, anywhere in 64 bits and past them, and the forms
    only one of two readings would take."""
    return st.one_of(
        st.sampled_from([low - 1, low, high, high + 1, 0, INT64_MAX, INT64_MAX + 1]).map(str),
        st.integers(low - 1, min(high + 1, 10**7)).map(str),
        st.integers(0, 2**65).map(str),
        st.integers(low, high).map(lambda n: "00" + str(n)),
        st.sampled_from(["", "+1", " 1", "1 ", "1_0", "1.0", "-1", "1e3", "0x1", "\u0661", "²"]),
        st.text(max_size=6),
    )


# -- GET /api/items/{item_id} ----------------------------------------------------------------

ITEM_ID = st.one_of(edges(ID.low, ID.high), st.sampled_from(["1", "2", "999999"]))
# Duckcast-Seq: none, seqs the cache has reached, one it has not (a short wait, then the
# store), and what is no seq at all
SEQ = st.one_of(
    st.none(),
    st.sampled_from(["0", "1", "2", "99999", str(INT64_MAX), str(INT64_MAX + 1)]),
    st.sampled_from(["", " 1", "1 ", "+1", "-1", "x", "\u0661", "²"]),
)

# -- GET /api/items ----------------------------------------------------------------------------

Q = st.one_of(
    st.just(""),  # `q=` after another q: no search (the last wins; the old fast path missed it)
    st.text(max_size=QUERY_MAX_LENGTH + 2),
    st.sampled_from(["", "seed", "x" * QUERY_MAX_LENGTH, "x" * (QUERY_MAX_LENGTH + 1)]),
)
LIST_VALUES: dict[str, st.SearchStrategy[str]] = {
    "page": edges(PAGE.low, PAGE.high),
    "limit": edges(LIMIT.low, LIMIT.high),
    "owner_id": edges(ID.low, ID.high),
    "status": st.sampled_from([*STATUSES, "", "Active", "bogus"]),
    "q": Q,
    "unknown": st.text(max_size=4),
    "token": st.text(max_size=4),
}
# Names drawn with replacement from a small set: a name given twice is common (the last wins).
LIST_PARAM = st.sampled_from(sorted(LIST_VALUES)).flatmap(
    lambda name: st.tuples(st.just(name), LIST_VALUES[name])
)
QUERY = st.one_of(
    st.lists(LIST_PARAM, max_size=6).map(lambda pairs: urllib.parse.urlencode(pairs).encode()),
    st.binary(max_size=20),  # not even a well-formed query string
)

# -- POST /api/items ---------------------------------------------------------------------------

JSON_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**65), 2**65), st.text(max_size=12),
    st.sampled_from([*STATUSES, "x" * 201, 100, 101, -1, 0]),
)  # fmt: skip
ITEM_FIELDS = st.sampled_from(["title", "description", "status", "priority", "owner_id", "id"])
# json.dumps, not orjson: orjson refuses integers past 64 bits, which clients can send
JSON_BODY = st.dictionaries(ITEM_FIELDS, JSON_VALUE, max_size=5).map(
    lambda d: json.dumps(d).encode()
)
PB_BODY = st.builds(
    lambda title, description, status, priority: pb.ItemCreate(
        title=title, description=description, status=status, priority=priority
    ).SerializeToString(),
    st.text(max_size=12),
    st.text(max_size=4),
    st.sampled_from([*STATUSES, "", "bogus"]),
    st.integers(-(2**31), 2**31 - 1),
)
BODY = st.one_of(JSON_BODY, PB_BODY, st.binary(max_size=30), st.just(b""))
CONTENT_TYPE = st.sampled_from(
    [JSON, f"{JSON}; charset=utf-8", "application/merge+json", PROTOBUF, X_PROTOBUF,
     "text/plain", "", "APPLICATION/JSON"]
)  # fmt: skip
IDEMPOTENCY_KEY = st.one_of(
    st.none(), st.sampled_from(["k-1", "", " ", "x" * 200, "x" * 201, "é"]), st.text(max_size=6)
)

# -- headers every route reads ---------------------------------------------------------------

ACCEPT = st.one_of(
    st.none(),
    st.sampled_from(
        [JSON, PROTOBUF, X_PROTOBUF, "*/*", f"text/html, {PROTOBUF};q=0.9", "application/xml"]
    ),
)
# Mostly a valid session, so that most requests get past 401 to their parameters.
AUTH = st.one_of(
    st.just("bearer"),
    st.sampled_from(
        [
            "bearer",
            "cookie",
            "both",
            "none",
            "bad-bearer",
            "bad-cookie",
            "basic",
            "odd-bearer",
            "basic-then-bearer",
            "bearer-then-bad",
            "empty-bearer",
        ]
    ),
)


@dataclass
class Live:
    app: FastAPI
    loop: asyncio.AbstractEventLoop
    token: str
    served: list[str]

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)


@pytest.fixture
def live(tmp_path: Any, password_hash: str) -> Iterator[Live]:
    """The app with its lifespan on a loop of its own (hypothesis drives a plain function), a
    user with two items, and each lean handler wrapped to record when it answers."""
    loop = asyncio.new_event_loop()
    app = create_app(Settings(data_dir=tmp_path / "data"))
    lifespan = app.router.lifespan_context(app)
    loop.run_until_complete(lifespan.__aenter__())
    store = app.state.store
    user = loop.run_until_complete(store.create_user("lean", password_hash))
    seeds = [pb.ItemCreate(title="seed"), pb.ItemCreate(title="other", status="completed")]
    loop.run_until_complete(store.create_items(user.id, seeds))
    served: list[str] = []
    routes = lean_routes(app)
    originals = [route.lean for route in routes]  # the route objects are the module's
    for route in routes:
        route.lean = _recording(route.lean, route.path, served)
    try:
        yield Live(app, loop, app.state.signer.issue(user.id).value, served)
    finally:
        for route, lean in zip(routes, originals, strict=True):
            route.lean = lean
        loop.run_until_complete(lifespan.__aexit__(None, None, None))
        loop.close()


def lean_routes(app: FastAPI) -> list[LeanRoute]:
    return [r for r in app.routes if isinstance(r, LeanRoute) and r.path.startswith("/api/items")]


def _recording(lean: Any, path: str, served: list[str]) -> Any:
    async def recording(*args: Any) -> bool:
        answered: bool = await lean(*args)
        if answered:
            served.append(path)
        return answered

    return recording


@contextlib.contextmanager
def lean_detached(app: FastAPI) -> Iterator[None]:
    """The declared endpoints alone answer while this holds."""
    routes = lean_routes(app)
    saved = [route.lean for route in routes]
    for route in routes:
        route.lean = None
    try:
        yield
    finally:
        for route, lean in zip(routes, saved, strict=True):
            route.lean = lean


def headers_for(
    live: Live, auth: str, accept: str | None, extra: Sequence[tuple[bytes, bytes]] = ()
) -> list[tuple[bytes, bytes]]:
    token = live.token.encode()
    headers = list(extra)
    if auth in ("bearer", "both"):
        headers.append((b"authorization", b"Bearer " + token))
    if auth in ("cookie", "both"):
        headers.append((b"cookie", b"duckcast_session=" + token))
    if auth == "bad-bearer":
        headers.append((b"authorization", b"Bearer " + token[:-2] + b"xx"))
    if auth == "bad-cookie":
        headers.append((b"cookie", b"duckcast_session=v2.1.2.3.4"))
    if auth == "basic":
        headers.append((b"authorization", b"Basic " + token))
    if auth == "odd-bearer":  # the scheme in any case, the token between spaces
        headers.append((b"authorization", b"bEARER  " + token + b" "))
    if auth == "basic-then-bearer":  # the first Authorization header counts
        headers += [(b"authorization", b"Basic x"), (b"authorization", b"Bearer " + token)]
    if auth == "bearer-then-bad":
        headers += [(b"authorization", b"Bearer " + token), (b"authorization", b"Bearer x")]
    if auth == "empty-bearer":  # no token in the header: the cookie's
        headers += [(b"authorization", b"Bearer  "), (b"cookie", b"duckcast_session=" + token)]
    if accept is not None:
        headers.append((b"accept", accept.encode()))
    return headers


Answer = tuple[int, dict[bytes, bytes], Any]


def comparable(answer: tuple[int, dict[bytes, bytes], bytes], created: bool) -> Answer:
    """Status, the compared headers and the body; of a created item, what two creates share
    (all but its id and timestamps)."""
    status, headers, body = answer
    kept = {name: value for name, value in headers.items() if name in COMPARED}
    content: Any = body
    if created and status == 201:
        media = headers[b"content-type"].decode()
        item = pb.Item.FromString(body) if "protobuf" in media else None
        if item is None:
            fields = orjson.loads(body)
            content = {
                k: v for k, v in fields.items() if k not in ("id", "created_at", "updated_at")
            }
        else:
            for name in MINTED:
                item.ClearField(name)
            content = item.SerializeToString(deterministic=True)
    return status, kept, content


def both_ways(live: Live, req: Request, created: bool = False) -> tuple[Answer, Answer]:
    lean = comparable(live.run(call_http(live.app, req)), created)
    with lean_detached(live.app):
        declared = comparable(live.run(call_http(live.app, req)), created)
    return lean, declared


PROPERTY = settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@PROPERTY
@given(item_id=ITEM_ID, auth=AUTH, accept=ACCEPT, seq=SEQ, seq2=SEQ, accept2=ACCEPT)
@example(item_id="1", auth="bearer", accept=JSON, seq=None, seq2=None, accept2=PROTOBUF)
@example(item_id="1", auth="bearer", accept=None, seq="1", seq2="x", accept2=None)
@example(item_id="1", auth="bearer", accept=None, seq="x", seq2="1", accept2=None)
@example(item_id="1", auth="odd-bearer", accept=None, seq=None, seq2=None, accept2=None)
@example(item_id="1", auth="basic-then-bearer", accept=None, seq=None, seq2=None, accept2=None)
@example(item_id="1", auth="bearer-then-bad", accept=None, seq=None, seq2=None, accept2=None)
@example(item_id="1", auth="empty-bearer", accept=None, seq=None, seq2=None, accept2=None)
def test_get_item_answers_alike(
    live: Live,
    item_id: str,
    auth: str,
    accept: str | None,
    seq: str | None,
    seq2: str | None,
    accept2: str | None,
) -> None:
    """The lean handler reads its headers in one pass: the first of each counts, as for a
    Request's headers.get()."""
    extra = [(b"duckcast-seq", s.encode()) for s in (seq, seq2) if s is not None]
    headers = headers_for(live, auth, accept, extra)
    if accept2 is not None:
        headers.append((b"accept", accept2.encode()))
    req = Request("GET", f"/api/items/{item_id}", b"", headers, b"")
    if "/" in item_id:
        return  # another route's path
    lean, declared = both_ways(live, req)
    assert lean == declared, (item_id, auth, accept, seq, seq2, accept2)


@PROPERTY
@given(query=QUERY, auth=AUTH, accept=ACCEPT)
@example(query=b"q=seed&q=", auth="bearer", accept=None)  # what the old fast path got wrong
def test_list_items_answers_alike(live: Live, query: bytes, auth: str, accept: str | None) -> None:
    req = Request("GET", "/api/items", query, headers_for(live, auth, accept), b"")
    lean, declared = both_ways(live, req)
    assert lean == declared, (query, auth, accept)


@PROPERTY
@given(
    body=BODY,
    content_type=CONTENT_TYPE,
    key=IDEMPOTENCY_KEY,
    auth=AUTH,
    accept=ACCEPT,
    length=st.sampled_from(["declared", "absent", "wrong"]),
)
def test_create_item_answers_alike(
    live: Live,
    body: bytes,
    content_type: str,
    key: str | None,
    auth: str,
    accept: str | None,
    length: str,
) -> None:
    extra = [(b"content-type", content_type.encode())]
    if key is not None:
        extra.append((b"idempotency-key", key.encode()))
    if length == "declared":
        extra.append((b"content-length", str(len(body)).encode()))
    elif length == "wrong":
        extra.append((b"content-length", b"x1"))
    req = Request("POST", "/api/items", b"", headers_for(live, auth, accept, extra), body)
    lean, declared = both_ways(live, req, created=True)
    assert lean == declared, (body, content_type, key, auth, accept, length)


def test_the_lean_handlers_answer_the_well_formed_requests(live: Live) -> None:
    """The comparisons above would pass if no lean handler ever answered: count them."""
    auth = headers_for(live, "bearer", None)
    body = orjson.dumps({"title": "x"})
    json_body = [*auth, (b"content-type", JSON.encode())]
    for req in (
        Request("GET", "/api/items/1", b"", auth, b""),
        Request("GET", "/api/items", b"limit=5&status=active&q=se&owner_id=1&page=1", auth, b""),
        Request("POST", "/api/items", b"", json_body, body),
    ):
        status, _, _ = live.run(call_http(live.app, req))
        assert status in (200, 201)
    assert live.served == ["/api/items/{item_id}", "/api/items", "/api/items"]
    for req in (
        Request("GET", "/api/items/0", b"", auth, b""),  # 422 from the endpoint
        Request("GET", "/api/items", b"limit=0", auth, b""),
        Request("GET", "/api/items", b"unknown=1", auth, b""),
        Request("HEAD", "/api/items/1", b"", auth, b""),
    ):
        live.run(call_http(live.app, req))
    assert len(live.served) == 3
