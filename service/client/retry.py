"""When a call is tried again, and how long the client waits first (shared by both clients)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Generic, TypeVar

import httpx

from service.client.calls import Answer, Call
from service.client.errors import TransportError, api_error, retry_after

T = TypeVar("T")

# Nothing reached the server: any call may be sent again, even a plain POST.
UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True, slots=True)
class Retry:
    """Retry policy. `attempts` counts the first try; waits grow exponentially from `backoff`
    to `max_backoff` with full jitter, or follow the server's `Retry-After` when it is at most
    `max_retry_after` seconds (a longer one is raised to the caller at once)."""

    attempts: int = 4
    backoff: float = 0.1
    max_backoff: float = 2.0
    max_retry_after: float = 10.0
    statuses: frozenset[int] = frozenset({429, 502, 503, 504})

    def pause(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))


NO_RETRY = Retry(attempts=1)


class Attempts(Generic[T]):
    """The tries of one call: after each, whether to try again and after how long."""

    def __init__(self, policy: Retry, call: Call[T]) -> None:
        self.policy = policy
        self.call = call
        self.tries = 0
        self.uncertain = False  # an earlier try may have taken effect on the server

    def after_failure(self, exc: httpx.TransportError) -> float:
        """Seconds to wait before the next try; raises TransportError when there is none."""
        self.tries += 1
        unsent = isinstance(exc, UNSENT)
        if (unsent or self.call.idempotent) and self.tries < self.policy.attempts:
            self.uncertain |= not unsent
            return self.policy.pause(self.tries)
        what = str(exc) or type(exc).__name__
        raise TransportError(f"{self.call.method} {self.call.path}: {what}") from exc

    def after_answer(self, answer: Answer) -> float | None:
        """Seconds to wait before trying again, or None when this answer is final."""
        self.tries += 1
        if not (
            answer.status in self.policy.statuses
            and self.call.idempotent
            and self.tries < self.policy.attempts
        ):
            return None
        hint = retry_after(answer.headers)
        if hint is not None and hint > self.policy.max_retry_after:
            return None
        # 429 was refused before any work; a 5xx may have come after the write committed.
        self.uncertain |= answer.status != 429
        return self.policy.pause(self.tries) if hint is None else hint

    def result(self, answer: Answer) -> T:
        if 200 <= answer.status < 300 or (
            answer.status == 404 and self.call.gone_is_done and self.uncertain
        ):
            return self.call.read(answer)
        raise api_error(answer.status, answer.content, answer.media, answer.headers)
