"""Operations endpoints: health, readiness, metrics, the browser app, schemas and OpenAPI."""

from __future__ import annotations

from pathlib import Path

import httpx

from service.pb import duckcast_pb2 as pb
from tests.api.conftest import Account
from tests.api.wire import JSON, PROTOBUF, X_PROTOBUF, error_message

ALL_MEDIA = {JSON, PROTOBUF, X_PROTOBUF}
ROOT = Path(__file__).resolve().parents[2]


async def test_healthz(client: httpx.AsyncClient) -> None:
    """GET /healthz answers 200 while the process runs, without credentials."""
    r = await client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


async def test_readyz_with_store_up(client: httpx.AsyncClient) -> None:
    """GET /readyz answers 200 while the (embedded) store answers."""
    r = await client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ready"


async def test_metrics_is_prometheus_text(client: httpx.AsyncClient, alice: Account) -> None:
    """GET /metrics is Prometheus text exposition that counts HTTP requests by route template
    (duckcast_http_requests_total), including the ones just made."""
    assert (await client.get("/api/items/424242", headers=alice.headers)).status_code == 404
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert "# TYPE duckcast_http_requests_total counter" in text
    lines = [ln for ln in text.splitlines() if ln.startswith("duckcast_http_requests_total{")]
    assert any('route="/api/items/{item_id}"' in ln and 'status="404"' in ln for ln in lines)
    assert not any("424242" in ln for ln in lines)  # raw paths never become labels


async def test_index_is_html(client: httpx.AsyncClient) -> None:
    """GET / serves the browser app as HTML."""
    r = await client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "<html" in r.text.lower()


async def test_proto_schema_served(client: httpx.AsyncClient) -> None:
    """GET /protos/duckcast.proto returns the schema text exactly as in protos/; unknown or
    path-like names answer 404."""
    r = await client.get("/protos/duckcast.proto")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert r.text == (ROOT / "protos" / "duckcast.proto").read_text()
    assert "message Item {" in r.text
    for name in ("nosuch", "Duckcast", "..%2Fpyproject", "duckcast.proto%00", "%2e%2e", "store"):
        missing = await client.get(f"/protos/{name}.proto")
        assert missing.status_code == 404, (name, missing.status_code)
        error_message(missing)


async def test_the_internal_schema_is_not_served(client: httpx.AsyncClient) -> None:
    """store.proto (the worker <-> store protocol) sits beside duckcast.proto in protos/ but
    is not public: 404 like a name that does not exist."""
    assert (ROOT / "protos" / "store.proto").is_file()
    r = await client.get("/protos/store.proto")
    assert r.status_code == 404
    assert "StoreRequest" not in r.text


# Every body OpenAPI lists in protobuf, and the message it must name.
PROTOBUF_BODIES = {
    ("/api/register", "post", "request"): "RegisterRequest",
    ("/api/register", "post", "201"): "User",
    ("/api/login", "post", "request"): "LoginRequest",
    ("/api/login", "post", "200"): "LoginResponse",
    ("/api/me", "get", "200"): "User",
    ("/api/items", "get", "200"): "ItemPage",
    ("/api/items", "post", "request"): "ItemCreate",
    ("/api/items", "post", "201"): "Item",
    ("/api/items/bulk", "post", "request"): "BulkCreateRequest",
    ("/api/items/bulk", "post", "201"): "ItemList",
    ("/api/items/{item_id}", "get", "200"): "Item",
    ("/api/items/{item_id}", "put", "request"): "ItemUpdate",
    ("/api/items/{item_id}", "put", "200"): "Item",
    ("/api/items/{item_id}", "patch", "request"): "ItemUpdate",
    ("/api/items/{item_id}", "patch", "200"): "Item",
    ("/api/stats", "get", "200"): "Stats",
    ("/api/upload", "post", "201"): "UploadResult",
}


async def test_openapi_names_the_protobuf_message_of_every_body(
    client: httpx.AsyncClient,
) -> None:
    """Every request and response body that OpenAPI offers in JSON and protobuf names its
    protobuf message (`x-protobuf-message`, in both protobuf media types): the message of the
    public schema whose fields are exactly the properties of the JSON body."""
    spec = (await client.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    found = {}
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            bodies = {"request": op.get("requestBody", {})} | op.get("responses", {})
            for where, body in bodies.items():
                content = body.get("content", {})
                if JSON not in content or not ({PROTOBUF, X_PROTOBUF} & set(content)):
                    continue
                names = {
                    content[media].get("x-protobuf-message") for media in (PROTOBUF, X_PROTOBUF)
                }
                assert len(names) == 1 and None not in names, (path, method, where, names)
                name = names.pop()
                package, _, short = name.rpartition(".")
                assert package == pb.DESCRIPTOR.package, name
                fields = {f.name for f in pb.DESCRIPTOR.message_types_by_name[short].fields}
                schema = content[JSON]["schema"]
                if "$ref" in schema:
                    schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
                assert set(schema["properties"]) == fields, (path, method, where)
                found[(path, method, where)] = short
    assert found == PROTOBUF_BODIES


async def test_openapi_lists_json_and_protobuf(client: httpx.AsyncClient) -> None:
    """/openapi.json lists application/json, application/protobuf and application/x-protobuf
    for the request body of POST /api/items (and the other body-taking routes) and for the
    success responses of GET /api/items/{item_id} (and the other negotiated routes)."""
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    create = paths["/api/items"]["post"]
    assert set(create["requestBody"]["content"]) >= ALL_MEDIA
    assert set(create["responses"]["201"]["content"]) >= ALL_MEDIA
    get_item = paths["/api/items/{item_id}"]["get"]
    assert set(get_item["responses"]["200"]["content"]) >= ALL_MEDIA
    bodies = [
        ("/api/register", "post"),
        ("/api/login", "post"),
        ("/api/items/bulk", "post"),
        ("/api/items/{item_id}", "put"),
        ("/api/items/{item_id}", "patch"),
    ]
    for path, method in bodies:
        assert set(paths[path][method]["requestBody"]["content"]) >= ALL_MEDIA, (path, method)
    responses = [
        ("/api/register", "post", "201"),
        ("/api/login", "post", "200"),
        ("/api/items/bulk", "post", "201"),
        ("/api/items", "get", "200"),
        ("/api/items/{item_id}", "put", "200"),
        ("/api/items/{item_id}", "patch", "200"),
        ("/api/stats", "get", "200"),
        ("/api/me", "get", "200"),
    ]
    for path, method, status in responses:
        content = paths[path][method]["responses"][status]["content"]
        assert set(content) >= ALL_MEDIA, (path, method, status)


async def test_docs_page(client: httpx.AsyncClient) -> None:
    """GET /docs serves the interactive OpenAPI page pointing at /openapi.json."""
    r = await client.get("/docs")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in r.text
