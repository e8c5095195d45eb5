"""Domain errors. One place (service.api.errors) maps them to HTTP answers; the store protocol
carries them as StoreError codes (service.store.protocol)."""

from __future__ import annotations


class DuckcastError(Exception):
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class NotFound(DuckcastError):
    status = 404


class Forbidden(DuckcastError):
    status = 403


class Conflict(DuckcastError):
    status = 409


class Invalid(DuckcastError):
    status = 422


class PreconditionFailed(DuckcastError):
    """If-Match named a version the item no longer (or never) had."""

    status = 412


class Unauthorized(DuckcastError):
    status = 401


class PayloadTooLarge(DuckcastError):
    status = 413


class TooManyRequests(DuckcastError):
    """A rate limit: answered 429 with `Retry-After: retry_after`."""

    status = 429

    def __init__(self, message: str, retry_after: int = 60) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UnsupportedMediaType(DuckcastError):
    status = 415


class StoreUnavailable(DuckcastError):
    """The store cannot be reached (or went away mid-request): retry later."""

    status = 503


class StoreTimeout(StoreUnavailable):
    """The store did not answer within the deadline. For a write this still means "not
    done": the store never starts committing a write past its deadline, and tells the worker
    before it commits one (see WriteInDoubt)."""


class WriteInDoubt(DuckcastError):
    """The store said it was committing the write, then went silent or away: the write may
    or may not be applied (a retry with the same Idempotency-Key is safe)."""

    status = 504
