"""service/logging.py: the one logging setup every process applies."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import logging.config
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from service.logging import (
    ACCESS_LOGGER,
    ACCESS_MESSAGE,
    FLUSH_CHARS,
    FLUSH_SECONDS,
    REQUEST,
    AccessLog,
    BufferedStreamHandler,
    JsonFormatter,
    RepeatFilter,
    RequestContext,
    flush_logs,
    logging_config,
    note_user,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(
    msg: str, *args: object, level: int = logging.WARNING, name: str = "x"
) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, logging.Logger]]:
    """The real dictConfig (JSON), its handler's stream swapped for a buffer; every logger it
    touches is put back afterwards (pytest's own capture hangs off the root)."""
    names = ["", *logging_config()["loggers"]]
    saved = {
        name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level,
               logging.getLogger(name).propagate)
        for name in names
    }  # fmt: skip
    stream = io.StringIO()

    def configure(level: str) -> None:
        logging.config.dictConfig(logging_config("json", level))
        handler = logging.root.handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(stream)

    configure("INFO")
    log = logging.getLogger("duckcast.test")
    log.configure = configure  # type: ignore[attr-defined]
    yield stream, log
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_time_level_logger_message_and_extras(
    captured: tuple[io.StringIO, logging.Logger],
) -> None:
    """One JSON object per record, with the record's `extra=` fields, and the traceback of an
    exception as a field (still one line)."""
    stream, log = captured
    log.info("served %s", "x", extra={"route": "/api/items", "status": 200})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    first, second = lines(stream)
    assert first["level"] == "INFO" and first["logger"] == "duckcast.test"
    assert first["message"] == "served x"
    assert first["route"] == "/api/items" and first["status"] == 200
    assert str(first["time"]).endswith("+00:00")
    assert "ValueError: boom" in str(second["exc_info"])
    assert len(stream.getvalue().splitlines()) == 2


def test_records_inside_a_request_name_it_and_its_user(
    captured: tuple[io.StringIO, logging.Logger],
) -> None:
    """A record logged while a request is handled carries its request id, and the user id
    once authentication has named the caller; outside a request, neither."""
    stream, log = captured
    token = REQUEST.set(RequestContext("req-1"))
    try:
        log.warning("before auth")
        note_user(42)
        log.warning("after auth")
    finally:
        REQUEST.reset(token)
    log.warning("outside")
    before, after, outside = lines(stream)
    assert before["request_id"] == "req-1" and "user_id" not in before
    assert after["request_id"] == "req-1" and after["user_id"] == 42
    assert "request_id" not in outside


def test_an_access_record_is_the_record_logger_info_makes(
    captured: tuple[io.StringIO, logging.Logger],
) -> None:
    """AccessLog makes its records from a template, not through Logger.info (service.logging):
    the handlers get the same record all the same, but for where and when it was made, and
    the JSON line holds the same fields."""
    stream, _ = captured
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    keep = Keep()
    logging.getLogger("duckcast.access").addHandler(keep)
    fields = {"method": "GET", "route": "/api/items/{item_id}", "status": 200, "user_id": 7}
    args = ("GET", "/api/items/{item_id}", 200, 0.25)
    try:
        logging.getLogger("duckcast.access").info("%s %s %d %.1fms", *args, extra=fields)
        AccessLog().log("%s %s %d %.1fms", args, fields)
    finally:
        logging.getLogger("duckcast.access").removeHandler(keep)
    by_info, by_template = (vars(r) for r in seen)
    where = {"pathname", "filename", "module", "lineno", "funcName"}
    when = {"created", "msecs", "relativeCreated"}
    assert by_template.keys() == by_info.keys()
    assert {k: v for k, v in by_template.items() if k not in where | when} == {
        k: v for k, v in by_info.items() if k not in where | when
    }
    assert 0 <= by_template["created"] - by_info["created"] < 1
    assert 0 <= by_template["relativeCreated"] - by_info["relativeCreated"] < 1000
    assert by_template["msecs"] == int((by_template["created"] % 1) * 1000)
    (from_info, from_template) = lines(stream)
    from_info.pop("time"), from_template.pop("time")
    assert from_template == from_info


def test_json_time_is_iso_8601_utc_to_the_millisecond() -> None:
    """The formatter makes the date and time of day once a second: the same text as
    datetime's, across second boundaries too."""
    formatter = JsonFormatter()
    edges = (1700000000.0, 1700000000.2504, 1700000000.9994, 1700000000.9999996, 1.5e9 + 0.001)
    for created in edges:
        expected = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
        assert json.loads(formatter.format(record("x", level=logging.INFO)))["level"] == "INFO"
        assert formatter._time(created) == expected, created


def test_text_format_for_a_terminal() -> None:
    """The text formatter: time, level, logger, pid, message, then key=value extras."""
    config = logging_config("text", "DEBUG")
    formatter = config["formatters"]["default"]["()"]()
    rec = record("store connection restored after %.1fs", 1.25, level=logging.INFO, name="s")
    rec.request_id = "abc"
    line = formatter.format(rec)
    assert " INFO s[" in line
    assert line.endswith("store connection restored after 1.2s request_id=abc")


def test_repeated_warnings_pass_once_per_interval_with_the_count_held_back() -> None:
    """The same warning template (whatever its arguments) passes once per interval; the next
    one that passes says how many were held back. Other templates, and INFO, always pass."""
    clock = Clock()
    repeats = RepeatFilter(interval=10, clock=clock)
    assert repeats.filter(record("redis down (%s)", "refused"))
    held = [repeats.filter(record("redis down (%s)", f"try {n}")) for n in range(5)]
    assert held == [False] * 5
    assert repeats.filter(record("store down"))  # another template
    assert all(repeats.filter(record("GET", level=logging.INFO)) for _ in range(3))
    clock.now += 10
    again = record("redis down (%s)", "refused")
    assert repeats.filter(again)
    assert again.repeated == 5  # type: ignore[attr-defined]
    clock.now += 10
    quiet = record("redis down (%s)", "refused")
    assert repeats.filter(quiet) and not hasattr(quiet, "repeated")


def test_level_setting_drops_lower_records(captured: tuple[io.StringIO, logging.Logger]) -> None:
    """DUCKCAST_LOG_LEVEL: WARNING drops INFO (the access log included)."""
    stream, log = captured
    log.configure("WARNING")  # type: ignore[attr-defined]
    logging.getLogger("duckcast.access").info("GET / 200")
    log.warning("kept")
    assert [line["message"] for line in lines(stream)] == ["kept"]


class CountingStream(io.StringIO):
    """A stream that counts its writes (each is a system call on a real stderr)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.written = asyncio.Event()

    def write(self, text: str) -> int:
        self.writes += 1
        self.written.set()
        return super().write(text)


def test_info_lines_on_an_event_loop_leave_in_one_write_in_order() -> None:
    """On an event loop, INFO lines are held and written together by the flush timer, in
    order; a warning is written at once, after the lines held before it."""
    stream = CountingStream()
    handler = BufferedStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))

    async def scenario() -> None:
        for n in range(50):
            handler.handle(record(f"GET {n}", level=logging.INFO))
        assert stream.writes == 0 and stream.getvalue() == ""
        await asyncio.wait_for(stream.written.wait(), timeout=FLUSH_SECONDS + 10)  # the timer
        assert stream.writes == 1
        assert stream.getvalue().splitlines() == [f"GET {n}" for n in range(50)]
        handler.handle(record("GET 50", level=logging.INFO))
        handler.handle(record("store down"))  # WARNING: now, after the line held before it
        assert stream.writes == 2
        assert stream.getvalue().splitlines()[-2:] == ["GET 50", "store down"]

    asyncio.run(scenario())


def test_held_lines_are_written_by_flush_and_without_a_loop_at_once() -> None:
    """flush() (a graceful stop: the lifespan, logging.shutdown at exit) writes what is held;
    a thread with no event loop (gunicorn's master, the supervisor) writes every line at once."""
    stream = CountingStream()
    handler = BufferedStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.handle(record("no loop", level=logging.INFO))
    assert stream.getvalue() == "no loop\n"

    async def scenario() -> None:
        handler.handle(record("held", level=logging.INFO))
        assert "held" not in stream.getvalue()
        flush_logs()
        assert stream.getvalue().splitlines() == ["no loop", "held"]

    asyncio.run(scenario())


def test_a_batch_is_written_once_it_reaches_its_size() -> None:
    stream = CountingStream()
    handler = BufferedStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    line = "x" * 1000

    async def scenario() -> None:
        for _ in range(FLUSH_CHARS // 1001 + 1):
            handler.handle(record(line, level=logging.INFO))
        assert stream.writes == 1

    asyncio.run(scenario())


ACCESS_ARGS = ("GET", "/api/items/{item_id}", 200, 0.25)
ACCESS_FIELDS = {
    "method": "GET",
    "route": "/api/items/{item_id}",
    "status": 200,
    "duration_ms": 0.25,
    "request_id": "r-1",
    "user_id": None,
}


@contextlib.contextmanager
def ours_alone() -> Iterator[BufferedStreamHandler]:
    """The root's handlers as a process has them: pytest's capture handlers (added for each
    test phase) taken off for a moment."""
    saved = logging.root.handlers[:]
    ours = [h for h in saved if isinstance(h, BufferedStreamHandler)]
    logging.root.handlers[:] = ours
    try:
        yield ours[0]
    finally:
        logging.root.handlers[:] = saved


def test_an_access_line_made_without_a_record_is_the_records_line(
    captured: tuple[io.StringIO, logging.Logger],
) -> None:
    """With this module's setup AccessLog formats the line itself (no record): the same JSON
    as the record path gives, and JsonFormatter.line() is format() to the byte."""
    stream, _ = captured
    access = logging.getLogger("duckcast.access")
    made: list[str] = []
    with ours_alone() as handler:
        add_line = handler.add_line
        handler.add_line = lambda line: (made.append(line), add_line(line))  # type: ignore[method-assign]
        try:
            AccessLog().log("%s %s %d %.1fms", ACCESS_ARGS, ACCESS_FIELDS)  # no record
        finally:
            del handler.add_line
    assert len(made) == 1
    seen: list[logging.LogRecord] = []

    def keep(record: logging.LogRecord) -> bool:
        seen.append(record)
        return True

    access.addFilter(keep)  # anything on the way: the record path
    try:
        with ours_alone():
            AccessLog().log("%s %s %d %.1fms", ACCESS_ARGS, ACCESS_FIELDS)
    finally:
        access.removeFilter(keep)
    direct, by_record = stream.getvalue().splitlines()
    (record_,) = seen
    assert json.loads(direct) | {"time": 0} == json.loads(by_record) | {"time": 0}
    formatter = JsonFormatter()
    expected = formatter.line(
        record_.created, record_.name, record_.getMessage(), record_.process or 0, ACCESS_FIELDS
    )
    assert expected == formatter.format(record_) == by_record


def test_a_filter_added_to_the_handler_sees_every_access_record(
    captured: tuple[io.StringIO, logging.Logger],
) -> None:
    """A filter added at run time to the handler (or a logger on the way) gets the record, as
    logging promises: the direct line is only for the setup whose filters change nothing."""
    stream, _ = captured

    def tag(record: logging.LogRecord) -> bool:
        record.tagged = True
        return True

    with ours_alone() as handler:
        handler.addFilter(tag)
        AccessLog().log("%s %s %d %.1fms", ACCESS_ARGS, ACCESS_FIELDS)
    assert lines(stream)[-1]["tagged"] is True


def test_an_access_line_from_its_template_is_line_to_the_byte() -> None:
    """JsonFormatter.access_line() (an access line made from a template per method, route and
    status) is line() of the same record, whatever the duration, ids and escapes."""
    formatter = JsonFormatter()
    routes = ("/api/items/{item_id}", "unmatched", '/odd "route" \\ é \x01')
    durations = (0.0, 1e-9, 0.000213, 0.0049999, 0.00995, 1.23456, 12345.678, 1e6, 5e-7)
    for created in (1700000000.0, 1700000000.9999996, 1.5e9 + 0.001):
        for route in routes:
            for status in (200, 404, 500):
                for elapsed in durations:
                    for user_id in (None, 7, 2**63 - 1):
                        fields = {
                            "method": "GET",
                            "route": route,
                            "status": status,
                            "duration_ms": round(elapsed * 1000, 2),
                            "request_id": "r-1/x:y",
                            "user_id": user_id,
                        }
                        message = ACCESS_MESSAGE % ("GET", route, status, elapsed * 1000)
                        expected = formatter.line(created, ACCESS_LOGGER, message, 42, fields)
                        made = formatter.access_line(
                            created, ACCESS_LOGGER, 42, "GET", route, status, elapsed,
                            "r-1/x:y", user_id,
                        )  # fmt: skip
                        assert made == expected


def test_access_lines_keep_their_place_among_the_batchs_lines(
    captured: tuple[io.StringIO, logging.Logger],
) -> None:
    """An access line's fields wait in the batch and are formatted when it is written: in
    their place among the other INFO lines, and the same line the record path writes."""
    stream, log = captured

    async def scenario() -> None:
        with ours_alone():
            log.info("before")
            AccessLog().request("GET", "/api/items/{item_id}", 200, 0.00025, "r-1", None)
            log.info("after")
            assert stream.getvalue() == ""  # held
            flush_logs()

    asyncio.run(scenario())
    written = lines(stream)
    assert [line["message"] for line in written] == [
        "before",
        "GET /api/items/{item_id} 200 0.2ms",
        "after",
    ]
    access = logging.getLogger(ACCESS_LOGGER)
    access.addFilter(lambda record: True)  # anything on the way: the record path
    try:
        with ours_alone():
            AccessLog().request("GET", "/api/items/{item_id}", 200, 0.00025, "r-1", None)
    finally:
        access.filters.clear()
    by_record = lines(stream)[-1]
    assert written[1] | {"time": 0} == by_record | {"time": 0}
    assert set(written[1]) == set(ACCESS_FIELDS) | {"time", "level", "logger", "message", "pid"}


def test_a_batch_held_for_a_loop_that_stopped_is_written_by_the_next() -> None:
    """A thread's second event loop (the first stopped with its flush timer pending) does not
    count on that timer: its first line is written at once, after the batch held before it."""
    stream = CountingStream()
    handler = BufferedStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))

    async def first() -> None:
        handler.handle(record("held by the first loop", level=logging.INFO))

    async def second() -> None:
        handler.handle(record("from the second", level=logging.INFO))

    asyncio.run(first())  # its timer never fires
    assert stream.getvalue() == ""
    asyncio.run(second())
    assert stream.getvalue().splitlines() == ["held by the first loop", "from the second"]
