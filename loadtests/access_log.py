"""`python -m loadtests.access_log`: CPU per access-log line, medians of 5 runs of 20,000.

The line as Edge writes it (service.logging.AccessLog: a record from a per-process template)
next to the same line through `Logger.info(..., extra=...)` (the caller lookup, LogRecord()
and the redacting record factory), both through the logging setup a worker has (JSON lines,
its filters) to a file, with redaction installed as in every Duckcast process; and the
AccessLog line on an event loop, where a worker's handler writes INFO lines in batches
(service.logging.BufferedStreamHandler) instead of one write per line.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

from service import redaction
from service.logging import ACCESS_LOGGER, REQUEST, AccessLog, RequestContext, configure, flush_logs

LINES = 20_000
FIELDS = {
    "method": "GET",
    "route": "/api/items/{item_id}",
    "status": 200,
    "duration_ms": 0.21,
    "request_id": "f804970f197626776fae9c438e34885e",
    "user_id": 7,
}
ARGS = ("GET", "/api/items/{item_id}", 200, 0.21)
TEMPLATE = "%s %s %d %.1fms"


def cost(write: Callable[[], None]) -> float:
    runs = []
    for _ in range(5):
        started = time.process_time()
        for _ in range(LINES):
            write()
        runs.append((time.process_time() - started) / LINES * 1e6)
    return statistics.median(runs)


def main() -> None:
    stderr = sys.stderr
    # line-buffered, as stderr is when it is not a terminal: a write per line
    with tempfile.TemporaryFile("w", buffering=1) as sink:
        sys.stderr = sink  # the handler configure() installs writes to sys.stderr
        try:
            redaction.install()
            configure("json", "INFO")
            REQUEST.set(RequestContext(str(FIELDS["request_id"]), 7))
            logger = logging.getLogger(ACCESS_LOGGER)
            access = AccessLog()
            by_info = cost(lambda: logger.info(TEMPLATE, *ARGS, extra=FIELDS))
            by_template = cost(lambda: access.log(TEMPLATE, ARGS, FIELDS))

            async def on_a_loop() -> float:  # as in a worker: lines written in batches
                spent = cost(lambda: access.log(TEMPLATE, ARGS, FIELDS))
                flush_logs()
                return spent

            batched = asyncio.run(on_a_loop())
        finally:
            sys.stderr = stderr
    print(f"access line through Logger.info:  {by_info:5.1f} us CPU")
    print(f"access line through AccessLog:    {by_template:5.1f} us CPU")
    print(f"the same on an event loop:        {batched:5.1f} us CPU (batched writes)")


if __name__ == "__main__":
    main()
