"""The suite-wide log scan: no token, password, cookie or secret key issued during the test
run may appear in any log record emitted in the test process, nor in any log file a
subprocess wrote under the run's temporary directory (tests/conftest.py fails the run).

What counts as issued:
- every string shaped like a session token (`v2.<user>.<exp>.<id>.<mac>`), whoever made it;
- the values tests exchanged over HTTP: token-shaped bearer, cookie and `?token=` values sent,
  passwords the service accepted (register 201, login 200), tokens and cookies received
  (httpx's send() is wrapped for the session);
- values registered with `remember()` (the secrets e2e deployments run with).
The signature part of a token (43 characters) is enough to count: a log line that holds it
holds the token, whatever happened to the rest.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import ahocorasick
import httpx

TOKEN_SHAPE = re.compile(r"v2\.\d+\.\d+\.[A-Za-z0-9_-]{22}\.([A-Za-z0-9_-]{43})")
MIN_PASSWORD = 8  # the API's minimum: shorter strings are too common to scan for
# The test's own client libraries log the URLs the tests request: that is the test talking,
# not the service.
CLIENT_LOGGERS = ("httpx", "httpcore", "websockets.client", "hpack")
LOG_FILE_SUFFIXES = (".log", ".out", ".err")


class LeakScan:
    def __init__(self) -> None:
        self.values: set[str] = set()
        self.records: list[tuple[str, str]] = []  # (logger name, text)
        self._automaton: Any = None  # built from `values` when the scan runs

    # -- what was issued --------------------------------------------------------------------

    def remember(self, value: str | None) -> None:
        if not value:
            return
        match = TOKEN_SHAPE.fullmatch(value)
        if match:
            self.values.add(match.group(1))  # the signature stands for the whole token
        elif len(value) >= MIN_PASSWORD:
            self.values.add(value)

    def saw_request(self, request: httpx.Request) -> None:
        # Only token-shaped values count from what a test sends: bad-input tests send
        # arbitrary text as tokens and cookies, and a random 8-character string can occur in
        # an innocent log line ("subscrib…" matched "resetting subscribers" once).
        auth = request.headers.get("authorization", "")
        if " " in auth:
            self.remember_token(auth.split(" ", 1)[1].strip())
        for header in request.headers.get_list("cookie"):
            for part in header.split(";"):
                self.remember_token(part.partition("=")[2].strip())
        for name, value in request.url.params.multi_items():
            if name == "token":
                self.remember_token(value)

    def remember_token(self, value: str) -> None:
        if TOKEN_SHAPE.fullmatch(value):
            self.remember(value)

    def _remember_password(self, request: httpx.Request) -> None:
        try:
            body = request.content
        except httpx.RequestNotRead:
            return
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):  # bad-input tests send anything
            data = None
        if isinstance(data, dict) and isinstance(data.get("password"), str):
            self.remember(data["password"])
        else:
            from service.pb import duckcast_pb2 as pb

            try:
                self.remember(pb.LoginRequest.FromString(body).password)
            except Exception:  # not a protobuf login either: nothing to remember
                return

    def saw_response(self, response: httpx.Response) -> None:
        for header in response.headers.get_list("set-cookie"):
            self.remember(header.split(";", 1)[0].partition("=")[2])
        path = response.request.url.path
        # A password is a secret once the service took it (the rejected ones of bad-input
        # tests are arbitrary text, see saw_request).
        if path.endswith(("/api/login", "/api/register")) and response.status_code in (200, 201):
            self._remember_password(response.request)
        if path.endswith("/api/login") and response.status_code == 200:
            try:
                self.remember(response.json().get("token"))
            except (ValueError, AttributeError):
                return

    # -- where it may leak ------------------------------------------------------------------

    def leaks_in(self, text: str) -> list[str]:
        found = [m.group(0)[:24] + "…" for m in TOKEN_SHAPE.finditer(text)]
        # One pass over the text for every issued value at once (Aho-Corasick): a suite issues
        # thousands of tokens and writes tens of MB of logs; `value in line` for each pair
        # took minutes.
        if self.values:
            if self._automaton is None or len(self._automaton) != len(self.values):
                self._automaton = ahocorasick.Automaton()
                for value in self.values:
                    self._automaton.add_word(value, value)
                self._automaton.make_automaton()
            found += sorted({v[:6] + "…" for _, v in self._automaton.iter(text)})
        return found

    def scan(self, files: Iterable[Path]) -> list[str]:
        problems = []
        for name, text in self.records:
            for leak in self.leaks_in(text):
                problems.append(f"log record of {name!r} holds {leak}: {text[:200]!r}")
        for path in files:
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                for leak in self.leaks_in(line):
                    problems.append(f"{path} holds {leak}: {line[:200]!r}")
        return problems


def wrap_logging(scan: LeakScan) -> list[tuple[Any, str, Any]]:
    """See the final text of every record any logger handles, whether it propagates to the
    root or not (uvicorn's loggers do not); returns what to restore. Records are made (and
    redacted by the service, if it installed service.redaction) before they are handled."""
    original = logging.Logger.handle
    plain = logging.Formatter("%(message)s")

    def handle(self: logging.Logger, record: logging.LogRecord) -> None:
        if not record.name.startswith(CLIENT_LOGGERS):
            try:
                scan.records.append((record.name, plain.format(record)))
            except Exception:  # a malformed log call: logging reports it in original()
                scan.records.append((record.name, str(record.msg)))
        original(self, record)

    logging.Logger.handle = handle  # type: ignore[method-assign]
    return [(logging.Logger, "handle", original)]


def log_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p.name.endswith(LOG_FILE_SUFFIXES)]


def wrap_httpx(scan: LeakScan) -> list[tuple[Any, str, Any]]:
    """Wrap httpx's Client.send and AsyncClient.send to see what tests send and receive;
    returns what to restore."""
    sync_send, async_send = httpx.Client.send, httpx.AsyncClient.send

    def send(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        scan.saw_request(request)
        response = sync_send(self, request, **kwargs)
        scan.saw_response(response)
        return response

    async def asend(
        self: httpx.AsyncClient, request: httpx.Request, **kwargs: Any
    ) -> httpx.Response:
        scan.saw_request(request)
        response = await async_send(self, request, **kwargs)
        scan.saw_response(response)
        return response

    httpx.Client.send = send  # type: ignore[method-assign]
    httpx.AsyncClient.send = asend  # type: ignore[method-assign]
    return [(httpx.Client, "send", sync_send), (httpx.AsyncClient, "send", async_send)]


SCAN = LeakScan()


def remember(value: str) -> None:
    """Register a secret the run uses (e.g. a deployment's DUCKCAST_SECRET_KEY)."""
    SCAN.remember(value)
