"""One logging setup for every Duckcast process: the supervisor, the store, gunicorn's master and
its workers, and embedded `duckcast serve` (each applies `logging_config(settings)`: gunicorn
through `logconfig_dict`, uvicorn through `log_config`, the others through `configure`).

- JSON lines (one object per record, `time level logger message pid` plus the record's extra
  fields) or plain text for a terminal: `DUCKCAST_LOG_FORMAT` (auto = text on a TTY).
- Every record logged while a request is handled carries its `request_id` (and `user_id` once
  the caller is known), from `REQUEST`, set by the request observer (service/api/edge.py).
- A warning or error repeated with the same template is let through once per
  `REPEAT_INTERVAL`, with the count of those held back: a dead peer retried every few
  seconds must not bury everything else.
- Secrets are taken out of every record when it is created (service.redaction, installed by
  each process's entry point: the CLI, `create_app`, gunicorn's settings module), before any
  handler configured here sees it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import logging.config
import math
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from service.pid import getpid

LogFormat = Literal["auto", "json", "text"]
REPEAT_INTERVAL = 10.0  # seconds
ACCESS_LOGGER = "duckcast.access"
ACCESS_MESSAGE = "%s %s %d %.1fms"  # method, route template, status, milliseconds
# INFO and below wait at most this long, or for this many characters, before their write
FLUSH_SECONDS = 0.1
FLUSH_CHARS = 64 * 1024


@dataclass(slots=True)
class RequestContext:
    """The request being handled; mutable so a dependency that learns the user can say so."""

    request_id: str
    user_id: int | None = None


REQUEST: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "duckcast_request", default=None
)


def note_user(user_id: int) -> None:
    """Record the authenticated caller for the access log and every later log record."""
    context = REQUEST.get()
    if context is not None:
        context.user_id = user_id


class RequestContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        context = REQUEST.get()
        if context is not None:
            if not hasattr(record, "request_id"):
                record.request_id = context.request_id
            if context.user_id is not None and not hasattr(record, "user_id"):
                record.user_id = context.user_id
        return True


class AccessLog:
    """The access log: one INFO record per request on `duckcast.access`, made for a fraction
    of what `Logger.info` costs (~40 % of a cached GET's CPU went to its one line).

    `Logger.info` looks up its caller's frame, and `LogRecord()` the thread, process and file
    names, the same on every request of a worker; here those come from a template made once
    per process. The record factory is skipped with them, so the redaction it runs
    (service.redaction) does not see these records: there is nothing for it to find, every
    field is ours (a method from a fixed set, a route *template*, numbers, and a request id
    that passed `redact()` on the way in or was made here). Handlers and filters see the
    record as they would any other.

    With the logging this module configures (JSON lines, one BufferedStreamHandler on the
    root, its two filters, which pass an access record unchanged) no record is made at all:
    the line is formatted as JsonFormatter would format the record, byte for byte, and handed
    to the handler's batch (~5 µs less per line). Any other setup, or one changed at run time
    (a handler or filter added anywhere on the way), gets the record.
    """

    def __init__(self, name: str = ACCESS_LOGGER) -> None:
        self.logger = logging.getLogger(name)
        self._pid = 0
        self._template: dict[str, Any] = {}

    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def request(
        self,
        method: str,
        route: str,
        status: int,
        elapsed: float,
        request_id: str,
        user_id: int | None,
    ) -> None:
        """A request's line (Edge's): `METHOD route status 1.2ms` with the fields. With this
        module's setup the line is not even formatted here: the handler keeps the fields and
        makes the line with the batch's (JsonFormatter.access_line, the same text)."""
        direct = _direct_handler(self.logger)
        if direct is not None:
            handler, formatter = direct
            entry = (formatter, time.time(), self.logger.name, self._process(), method, route,
                     status, elapsed, request_id, user_id)  # fmt: skip
            handler.add_access(entry)
            return
        fields: dict[str, Any] = {
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": round(elapsed * 1000, 2),
            "request_id": request_id,
            "user_id": user_id,
        }
        self.log(ACCESS_MESSAGE, (method, route, status, elapsed * 1000), fields)

    def _process(self) -> int:
        if self._pid != getpid():  # made after a fork (gunicorn), not before
            base = logging.LogRecord(self.logger.name, logging.INFO, __file__, 0, "", (), None)
            self._template = vars(base)
            self._pid = getpid()
        return self._pid

    def log(self, msg: str, args: tuple[object, ...], fields: dict[str, Any]) -> None:
        self._process()
        now = time.time()
        direct = _direct_handler(self.logger)
        if direct is not None:
            handler, formatter = direct
            message = msg % args
            handler.add_line(formatter.line(now, self.logger.name, message, self._pid, fields))
            return
        record = logging.LogRecord.__new__(logging.LogRecord)
        template = self._template
        attributes = record.__dict__
        attributes.update(template)
        attributes.update(fields)
        attributes["msg"], attributes["args"] = msg, args
        attributes["created"] = now
        attributes["msecs"] = int((now - int(now)) * 1000) + 0.0  # as LogRecord() has it
        attributes["relativeCreated"] = template["relativeCreated"] + (
            (now - template["created"]) * 1000
        )
        self.logger.handle(record)


@dataclass(slots=True)
class _Seen:
    at: float
    held_back: int = 0


class RepeatFilter(logging.Filter):
    """Warnings and errors with the same logger, level and message template pass once per
    `interval`; the next one to pass carries `repeated`, the number held back meanwhile.
    INFO and below always pass (the access log is one template)."""

    MAX_KEYS = 1000

    def __init__(
        self, interval: float = REPEAT_INTERVAL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        self._seen: dict[tuple[str, int, str], _Seen] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, str(record.msg))
        with self._lock:
            now = self.clock()
            seen = self._seen.get(key)
            if seen is not None and now - seen.at < self.interval:
                seen.held_back += 1
                return False
            if seen is not None and seen.held_back:
                record.repeated = seen.held_back
            if len(self._seen) >= self.MAX_KEYS:
                # messages formatted before logging (f-strings) would each be a key
                self._seen = {k: v for k, v in self._seen.items() if now - v.at < self.interval}
            self._seen[key] = _Seen(now)
            return True


# Attributes every LogRecord has: anything else on a record came from `extra=` or a filter
# (but uvicorn's `color_message` is its message again, with terminal colours).
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and k[0] != "_"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line (orjson: a few µs, it runs once per request for the access
    log)."""

    _second = -1
    _second_text = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._access: dict[tuple[str, int, str, str, int], tuple[str, str]] = {}

    def line(
        self, created: float, name: str, message: str, pid: int, fields: dict[str, Any]
    ) -> str:
        """What format() makes of an INFO record with these attributes and extra fields."""
        out: dict[str, Any] = {
            "time": self._time(created),
            "level": "INFO",
            "logger": name,
            "message": message,
            "pid": pid,
        }
        out.update(fields)
        return orjson.dumps(out, default=str).decode()

    def access_line(
        self,
        created: float,
        name: str,
        pid: int,
        method: str,
        route: str,
        status: int,
        elapsed: float,
        request_id: str,
        user_id: int | None,
    ) -> str:
        """line() of an access record (AccessLog.request) to the byte, from a template made
        once per logger, pid, method, route and status: what is left is the time, the
        duration twice, the request id and the user."""
        key = (name, pid, method, route, status)
        parts = self._access.get(key)
        if parts is None:
            if len(self._access) >= ACCESS_TEMPLATES:
                self._access.clear()
            dumps = _json_text
            # the message is escaped as one string: the escaped start, then the duration
            message = dumps(f"{method} {route} {status} ")[:-1]
            head = f'","level":"INFO","logger":{dumps(name)},"message":{message}'
            tail = (f'ms","pid":{pid},"method":{dumps(method)},"route":{dumps(route)},'
                    f'"status":{dumps(status)},"duration_ms":')  # fmt: skip
            parts = self._access[key] = (head, tail)
        head, tail = parts
        ms = elapsed * 1000
        user = "null" if user_id is None else _json_text(user_id)
        return (
            f'{{"time":"{self._time(created)}{head}{ms:.1f}{tail}{_json_text(round(ms, 2))}'
            f',"request_id":{_json_text(request_id)},"user_id":{user}}}'
        )

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self._time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        out.update(_extras(record))
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return orjson.dumps(out, default=str).decode()

    def _time(self, created: float) -> str:
        """ISO 8601 in UTC to the millisecond, as datetime writes it (rounded to the
        microsecond, then cut), its date and time of day made once a second."""
        fraction, whole = math.modf(created)
        second, micros = int(whole), round(fraction * 1e6)
        if micros >= 1_000_000:
            second, micros = second + 1, micros - 1_000_000
        if second != self._second:
            text = datetime.fromtimestamp(second, UTC).isoformat(timespec="seconds")
            self._second_text, self._second = text[:-6], second  # without "+00:00"
        return f"{self._second_text}.{micros // 1000:03d}+00:00"


# access line templates a formatter keeps (cleared when full): methods x routes x statuses
ACCESS_TEMPLATES = 4096


def _json_text(value: object) -> str:
    return orjson.dumps(value, default=str).decode()


class TextFormatter(logging.Formatter):
    """`time LEVEL logger[pid]: message key=value …` for a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        extras = _extras(record)
        return line + "".join(f" {k}={v}" for k, v in extras.items()) if extras else line


# An access line's formatter and fields: JsonFormatter.access_line(*entry[1:]) is its text.
AccessEntry = tuple["JsonFormatter", float, str, int, str, str, int, float, str, int | None]
ACCESS_LINE_CHARS = 300  # about an access line's length, for FLUSH_CHARS


def _access_text(entry: Any, terminator: str) -> str:
    return str(entry[0].access_line(*entry[1:])) + terminator


class BufferedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that writes INFO and below in batches: at most FLUSH_SECONDS after the
    first line of a batch (a timer on the event loop of the thread that logged it), once a
    batch reaches FLUSH_CHARS, or as soon as a WARNING or worse comes (after the lines before
    it, in order). Without a running event loop in the logging thread (gunicorn's master, the
    supervisor, a worker thread) every record is written at once, as StreamHandler does.

    Why: the access log writes a line per request, and a write (and flush) per line was a
    system call and a fifth of the line's CPU. One write per batch instead.

    Nothing is lost on a graceful stop: `flush()` writes the batch, and `logging.shutdown()`
    (run at interpreter exit) and `close()` call it; the lifespan's shutdown flushes too. What
    a crash (SIGKILL, a segfault) loses: the INFO lines of the last FLUSH_SECONDS at most;
    warnings and errors are never held."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._batch: list[str | AccessEntry] = []
        self._chars = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the timer's
        self._thread = 0  # the thread that scheduled the timer, on its running loop
        _BUFFERED.add(self)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._add(line, urgent=record.levelno >= logging.WARNING)

    def add_line(self, line: str) -> None:
        """An INFO line its producer formatted (AccessLog): as a record's would be."""
        with self.lock:  # type: ignore[union-attr]
            self._add(line, urgent=False)

    def add_access(self, entry: AccessEntry) -> None:
        """An access line's fields (AccessLog.request), formatted with the batch, in its place
        among the batch's lines (counted as ACCESS_LINE_CHARS towards FLUSH_CHARS)."""
        with self.lock:  # type: ignore[union-attr]
            self._batch.append(entry)
            self._chars += ACCESS_LINE_CHARS
            if self._chars < FLUSH_CHARS and self._scheduled():
                return
            self._write()

    def _add(self, line: str, urgent: bool) -> None:
        line += self.terminator
        self._batch.append(line)
        self._chars += len(line)
        if not urgent and self._chars < FLUSH_CHARS and self._scheduled():
            return
        self._write()

    def _scheduled(self) -> bool:
        """Whether a flush is due on this thread's event loop (scheduled if need be)."""
        if (
            self._timer is not None
            and self._thread == threading.get_ident()
            and self._loop is not None
            and self._loop.is_running()
        ):
            # The loop that holds the timer runs on this thread, so it is this thread's
            # running loop: asked without get_running_loop(), which costs a getpid() system
            # call per use on Python 3.11 (a line per request).
            return True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        if self._timer is None or self._loop is not loop:
            if self._timer is not None:
                self._write()  # the batch another loop was to flush: it may never run again
            self._timer = loop.call_later(FLUSH_SECONDS, self.flush)
            self._loop = loop
            self._thread = threading.get_ident()
        return True

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write()

    def _write(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._loop = None
        if self._batch:
            batch, self._batch, self._chars = self._batch, [], 0
            try:
                text = "".join(
                    line if type(line) is str else _access_text(line, self.terminator)
                    for line in batch
                )
                self.stream.write(text)
            except Exception:
                self.handleError(logging.makeLogRecord({"msg": "a batch of log lines"}))
        super().flush()

    def _forget(self) -> None:
        self._batch, self._chars, self._timer, self._loop = [], 0, None, None


# The filters logging_config() installs: an access record passes both unchanged (it carries
# its request id and user id already, and INFO is never held back).
_PASSING: tuple[type, ...] = (RequestContextFilter, RepeatFilter)

# Every BufferedStreamHandler, so a forked child (gunicorn's workers) can drop the batches it
# inherited: its parent writes them.
_BUFFERED: weakref.WeakSet[BufferedStreamHandler] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for handler in list(_BUFFERED):
        handler._forget()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _direct_handler(logger: logging.Logger) -> tuple[BufferedStreamHandler, JsonFormatter] | None:
    """The one handler an INFO record of `logger` would reach, with its JSON formatter, if
    nothing on the way could change or drop it (this module's setup); else None."""
    node: logging.Logger | None = logger
    found = None
    while node is not None:
        if node.filters or node.disabled:
            return None
        for handler in node.handlers:
            if found is not None or type(handler) is not BufferedStreamHandler:
                return None
            formatter = handler.formatter
            if handler.level > logging.INFO or type(formatter) is not JsonFormatter:
                return None
            for f in handler.filters:  # a loop, not all(...): no generator per request
                if type(f) not in _PASSING:
                    return None
            found = (handler, formatter)
        node = node.parent if node.propagate else None
    return found


def flush_logs() -> None:
    """Write every batched line now (a worker's lifespan calls it as it stops)."""
    for handler in list(_BUFFERED):
        handler.flush()


def resolve_format(fmt: str) -> Literal["json", "text"]:
    if fmt == "auto":
        return "text" if sys.stderr.isatty() else "json"
    return "json" if fmt == "json" else "text"


def logging_config(fmt: str = "auto", level: str = "INFO") -> dict[str, Any]:
    """A `logging.config.dictConfig` dict: everything to stderr through one handler."""
    filters: dict[str, dict[str, Any]] = {
        "request": {"()": RequestContextFilter},
        "repeats": {"()": RepeatFilter},
    }
    formatter = {"()": JsonFormatter if resolve_format(fmt) == "json" else TextFormatter}
    # gunicorn hands its error logger's handlers to uvicorn's (uvicorn-worker), so the named
    # loggers below need the handler itself, not just propagation to the root.
    own = {"handlers": ["stderr"], "level": level, "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": filters,
        "formatters": {"default": formatter},
        "handlers": {
            "stderr": {
                "()": BufferedStreamHandler,
                "stream": "ext://sys.stderr",
                "formatter": "default",
                "filters": list(filters),
            }
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            "gunicorn.error": own,
            "uvicorn": own,
            # the app writes its own access log (route template, request id, no query string)
            "gunicorn.access": {"handlers": [], "propagate": False},
            "uvicorn.access": {"handlers": [], "propagate": False},
        },
    }


def configure(fmt: str = "auto", level: str = "INFO") -> None:
    logging.config.dictConfig(logging_config(fmt, level))
