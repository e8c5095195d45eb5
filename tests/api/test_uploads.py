"""Uploads: stored under generated names inside the uploads dir, served back verbatim with
nosniff, size-limited, and never a way to read or write outside that directory."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from fastapi import FastAPI

from service.config import Settings
from service.pb import duckcast_pb2 as pb
from tests.api.conftest import Account, SmallApp
from tests.api.wire import JSON, PROTOBUF, Wire, error_message, raw_get

GENERATED = re.compile(r"^[0-9a-f]{32}(\.[a-z0-9]{1,10})?$")


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def new_files_outside(root: Path, before: set[Path], uploads: Path, data: Path) -> set[Path]:
    """Files that appeared under root but not inside the uploads dir (the database's own files
    excepted)."""
    added = files_under(root) - before
    return {
        p
        for p in added
        if uploads.resolve() not in p.resolve().parents
        and not (p.parent == data and p.name.startswith("duckcast.duckdb"))
    }


async def test_upload_round_trip(
    client: httpx.AsyncClient, alice: Account, settings: Settings, wire: Wire
) -> None:
    """POST /api/upload answers 201 {filename, url, size, content_type} in the negotiated
    format; GET url returns the very same bytes with X-Content-Type-Options: nosniff and a
    sandbox CSP (an uploaded page runs no script on our origin: README, Additions to the
    public contract), and the file sits in the uploads dir under the generated name."""
    data = b"hello, duckcast\n" * 40
    r = await client.post(
        "/api/upload",
        files={"file": ("notes.txt", data, "text/plain")},
        headers={"Accept": wire.media, **alice.headers},
    )
    assert r.status_code == 201, r.content
    result = wire.decode(r, pb.UploadResult)
    assert set(result) == {"filename", "url", "size", "content_type"}
    assert GENERATED.match(result["filename"]) and result["filename"].endswith(".txt")
    assert result["filename"] != "notes.txt"
    assert result["url"] == f"/uploads/{result['filename']}"
    assert result["size"] == len(data)
    assert result["content_type"] == "text/plain"
    assert (settings.uploads_dir / result["filename"]).read_bytes() == data

    got = await client.get(result["url"])
    assert got.status_code == 200
    assert got.content == data
    assert got.headers["x-content-type-options"] == "nosniff"
    assert got.headers["content-security-policy"].split(";")[0] == "sandbox"


async def test_upload_binary_without_extension(client: httpx.AsyncClient, alice: Account) -> None:
    """Arbitrary binary bytes (every byte value, an empty file) round-trip exactly; a name
    without an extension is served as application/octet-stream."""
    for data in (bytes(range(256)) * 3, b""):
        r = await client.post(
            "/api/upload",
            files={"file": ("blob", data, "application/x-whatever")},
            headers=alice.headers,
        )
        assert r.status_code == 201, r.text
        result = r.json()
        assert re.fullmatch(r"[0-9a-f]{32}", result["filename"])
        assert result["size"] == len(data)
        assert result["content_type"] == "application/octet-stream"
        got = await client.get(result["url"])
        assert got.status_code == 200 and got.content == data
        assert got.headers["x-content-type-options"] == "nosniff"


async def test_upload_size_limit(small: SmallApp) -> None:
    """A file over upload_max_bytes answers 413 (JSON or protobuf) and leaves no file behind;
    a file of exactly the limit is accepted; a body far over the limit is refused up front."""
    user = await small.app.state.store.create_user("uploader", "not-a-real-hash")
    headers = {"Authorization": f"Bearer {small.app.state.signer.issue(user.id).value}"}
    limit = small.settings.upload_max_bytes
    assert limit == 1024
    exact = await small.client.post(
        "/api/upload", files={"file": ("ok.bin", b"a" * limit)}, headers=headers
    )
    assert exact.status_code == 201, exact.text
    assert exact.json()["size"] == limit
    for media in (JSON, PROTOBUF):
        for size in (limit + 1, 200 * 1024):
            r = await small.client.post(
                "/api/upload",
                files={"file": ("big.bin", b"b" * size)},
                headers={"Accept": media, **headers},
            )
            assert r.status_code == 413, (media, size, r.status_code)
            error_message(r, media)
    stored = files_under(small.settings.uploads_dir)
    assert stored == {small.settings.uploads_dir / exact.json()["filename"]}


TRAVERSAL_NAMES = [
    "../../etc/passwd",
    "..\\..\\x.txt",
    "/tmp/abs.txt",
    "a/../../b.png",
    "....//....//c.txt",
    "..",
    "%2e%2e%2fd.txt",
    "x.txt\x00.png",
    "CON.TXT",
]


async def test_upload_client_filename_never_reaches_filesystem(
    client: httpx.AsyncClient, alice: Account, settings: Settings, tmp_path: Path
) -> None:
    """Hostile client filenames ('../../etc/passwd', '..\\..\\x.txt', absolute paths...) are
    stored under a generated name inside the uploads dir; the url has no '..'; no file appears
    anywhere else."""
    before = files_under(tmp_path)
    for name in TRAVERSAL_NAMES:
        data = f"payload for {name!r}".encode()
        r = await client.post(
            "/api/upload", files={"file": (name, data, "text/plain")}, headers=alice.headers
        )
        assert r.status_code == 201, (name, r.text)
        result = r.json()
        assert GENERATED.match(result["filename"]), (name, result)
        assert ".." not in result["url"] and "/" not in result["filename"]
        assert result["url"] == f"/uploads/{result['filename']}"
        stored = settings.uploads_dir / result["filename"]
        assert stored.resolve().parent == settings.uploads_dir.resolve()
        assert stored.read_bytes() == data
        got = await client.get(result["url"])
        assert got.status_code == 200 and got.content == data
    outside = new_files_outside(tmp_path, before, settings.uploads_dir, settings.data_dir)
    assert outside == set()
    assert len(files_under(settings.uploads_dir)) == len(TRAVERSAL_NAMES)


async def test_uploads_route_serves_only_generated_names(
    client: httpx.AsyncClient, app: FastAPI, alice: Account, settings: Settings
) -> None:
    """GET /uploads/<anything but a stored generated name> -- dot segments, encoded slashes or
    backslashes, names of files outside the uploads dir -- answers 404 or 422 and never the
    content of a file outside the uploads dir."""
    r = await client.post(
        "/api/upload", files={"file": ("real.txt", b"inside")}, headers=alice.headers
    )
    assert r.status_code == 201
    secret = b"TOP-SECRET-OUTSIDE-UPLOADS"
    (settings.data_dir / "secret.txt").write_bytes(secret)
    (settings.data_dir / ("0" * 32 + ".txt")).write_bytes(secret)  # a valid-looking name
    paths = [
        b"/uploads/../secret.txt",
        b"/uploads/..%2Fsecret.txt",
        b"/uploads/%2e%2e%2fsecret.txt",
        b"/uploads/%2E%2E/secret.txt",
        b"/uploads/..%5Csecret.txt",
        b"/uploads/..",
        b"/uploads/%2e%2e",
        b"/uploads/secret.txt",
        b"/uploads/../" + b"0" * 32 + b".txt",
        b"/uploads/..%2F" + b"0" * 32 + b".txt",
        b"/uploads/" + b"0" * 32 + b".txt",  # right shape, not stored in the uploads dir
        b"/uploads/" + b"F" * 32,
        b"/uploads/../duckcast.duckdb",
        b"/uploads/..%2Fduckcast.duckdb",
        b"/uploads/%2Fetc%2Fpasswd",
    ]
    status, body = await raw_get(app, r.json()["url"].encode())
    assert (status, body) == (200, b"inside")  # the helper can fetch what is really there
    for path in paths:
        status, body = await raw_get(app, path)
        assert status in (404, 422), (path, status)
        assert secret not in body and b"root:" not in body, path
    for path in paths:
        r = await client.get(path.decode())  # and through a normal client
        assert r.status_code != 200 or secret not in r.content, path


async def test_upload_requires_a_file_field(client: httpx.AsyncClient, alice: Account) -> None:
    """A multipart body without a `file` file field, a `file` that is a plain text field, a
    JSON body, or no body at all is a 4xx, and nothing is stored."""
    attempts = [
        {"files": {"other": ("a.txt", b"data")}},
        {"data": {"file": "just text"}, "files": {"other": ("a.txt", b"data")}},
        {"data": {"file": "just text"}},
        {"json": {"file": "x"}},
        {},
    ]
    for kwargs in attempts:
        r = await client.post("/api/upload", headers=alice.headers, **kwargs)  # type: ignore[arg-type]
        assert 400 <= r.status_code < 500, (kwargs, r.status_code)
        error_message(r)
    r = await client.post(
        "/api/upload",
        files={"other": ("a.txt", b"data")},
        headers={"Accept": PROTOBUF, **alice.headers},
    )
    assert 400 <= r.status_code < 500
    error_message(r, PROTOBUF)
