"""A warning that an outsider can trigger at will (a forged message, a refused connection) is
logged at most once per interval, with the count of those it held back: a flood shows up in
one line (and in a metric), not as a full disk."""

from __future__ import annotations

import logging
import time


class ThrottledWarning:
    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self._logger = logger
        self._interval = interval
        self._next_at = 0.0
        self._held = 0

    def __call__(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next_at:
            self._held += 1
            return
        if self._held:
            msg += " (and %d more like it in the last %gs)"
            args = (*args, self._held, self._interval)
        self._held = 0
        self._next_at = now + self._interval
        self._logger.warning(msg, *args)
