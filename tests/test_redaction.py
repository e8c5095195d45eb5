"""Log redaction (service.redaction): what a log line may not hold, in the shapes it arrives in
(URLs with ?token=, headers, cookies, JSON bodies, Redis URLs, tracebacks, uvicorn's access
log), and that the record keeps the shape its formatter needs."""

from __future__ import annotations

import logging

import pytest
from uvicorn.logging import AccessFormatter

from service import redaction
from service.api.auth import TokenSigner
from service.keys import derive

TOKEN = TokenSigner(derive(b"redaction tests", "token"), 3600).issue(42).value
MAC = TOKEN.rsplit(".", 1)[1]


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        (f'GET /api/events?token={TOKEN}&since=3 HTTP/1.1" 200', TOKEN),
        (f"/ws/items?format=json&token={TOKEN}", TOKEN),
        ("/ws/items?token=not-a-real-token-but-still-private", "not-a-real-token"),
        (f"Authorization: Bearer {TOKEN}", MAC),
        ("authorization: bearer some-opaque-value-123", "some-opaque-value"),
        (f"Cookie: theme=dark; duckcast_session={TOKEN}", MAC),
        (f"set-cookie: duckcast_session={TOKEN}; HttpOnly", MAC),
        ('{"username": "alice", "password": "correct horse battery"}', "correct horse"),
        ("{'password': 'hunter2-hunter2'}", "hunter2"),
        ("password=swordfish-42&username=bob", "swordfish"),
        ("REDIS_URL=redis://duckcast:acl-secret-pw@redis:6379/0", "acl-secret-pw"),
        ("rediss://:only-a-password@host:6380/0", "only-a-password"),
        ("hash $argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA stored", "c2FsdA$aGFzaA"),
        (f"issued {TOKEN} to user 42", MAC),
        ("DUCKCAST_SECRET_KEY=9f86d081884c7d659a2feaa0c55ad015", "9f86d081884c"),
    ],
)
def test_redact(line: str, secret: str) -> None:
    cleaned = redaction.redact(line)
    assert secret not in cleaned, cleaned
    assert redaction.REDACTED in cleaned


def test_ordinary_lines_pass_unchanged() -> None:
    for line in (
        "GET /api/items?page=2&limit=20 HTTP/1.1 200",
        "store listening on unix:/data/store.sock",
        "relay out of order: got 7, expected 5",
        "subscribed to duckcast:events:v1",
    ):
        assert redaction.redact(line) == line


@pytest.fixture
def installed() -> None:
    redaction.install()


def make_record(
    name: str, msg: str, *args: object, exc: BaseException | None = None
) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc else None
    return logging.getLogger(name).makeRecord(name, logging.INFO, __file__, 1, msg, args, exc_info)


def test_every_record_is_redacted_once_installed(installed: None) -> None:
    """Message, arguments, a secret split between the two, and exception text."""
    plain = make_record("any", "GET %s", f"/api/events?token={TOKEN}")
    assert MAC not in plain.getMessage()
    split = make_record("any", "login for %s with password=%s", "bob", "hunter2-hunter2")
    assert "hunter2" not in split.getMessage()
    try:
        raise ValueError(f"bad cookie duckcast_session={TOKEN}")
    except ValueError as exc:
        failed = make_record("any", "failed", exc=exc)
    assert MAC not in logging.Formatter().format(failed)


def test_uvicorn_access_log_keeps_its_shape(installed: None) -> None:
    """uvicorn's AccessFormatter unpacks exactly five args: redaction works inside them."""
    record = make_record(
        "uvicorn.access",
        '%s - "%s %s HTTP/%s" %d',
        "127.0.0.1:5000",
        "GET",
        f"/api/events?token={TOKEN}",
        "1.1",
        200,
    )
    line = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s').format(record)
    assert MAC not in line
    assert "/api/events?token=" in line and "200" in line


def test_the_filter_form(installed: None) -> None:
    """RedactSecrets does the same for records made elsewhere (another process, a queue)."""
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "cookie %s", (TOKEN,), None)
    assert redaction.RedactSecrets().filter(record)
    assert MAC not in record.getMessage()
