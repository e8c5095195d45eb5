"""What the client raises. Every error is a `ClientError`; an answer the server refused is an
`ApiError` subclass chosen by its HTTP status, carrying the status and the server's `detail`."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from google.protobuf.message import DecodeError

from service.pb import duckcast_pb2 as pb


class ClientError(Exception):
    """Anything the Duckcast client raises."""


class TransportError(ClientError):
    """The server could not be reached, or the connection failed mid-call (after retries)."""


class ProtocolError(ClientError):
    """The server answered something this client cannot read (not the Duckcast API?)."""


class ApiError(ClientError):
    """The server answered with an error status."""

    status = 0

    def __init__(self, status: int, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.retry_after = retry_after  # seconds, when the server said when to come back

    def __str__(self) -> str:
        return f"{self.detail} (HTTP {self.status})"


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    """Not signed in, or the token is invalid, expired or revoked."""

    status = 401


class SessionExpired(Unauthorized):
    """A change stream was ended because its token expired or was revoked."""


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class PreconditionFailed(ApiError):
    """`If-Match` named a version the item no longer has: reload it and decide again."""

    status = 412


class PayloadTooLarge(ApiError):
    status = 413


class UnsupportedMediaType(ApiError):
    status = 415


class Unprocessable(ApiError):
    """Validation failed; `detail` names the field."""

    status = 422


class TooManyRequests(ApiError):
    status = 429


class ServerError(ApiError):
    """A 5xx answer."""

    status = 500


class ServiceUnavailable(ServerError):
    status = 503


class StreamRejected(ClientError):
    """The server refused a change stream's parameters (WebSocket close 1008, SSE 4xx)."""


BY_STATUS: dict[int, type[ApiError]] = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        PreconditionFailed,
        PayloadTooLarge,
        UnsupportedMediaType,
        Unprocessable,
        TooManyRequests,
        ServiceUnavailable,
    )
}


def retry_after(headers: Mapping[str, str]) -> float | None:
    """`Retry-After` in seconds (the delta form; Duckcast never sends an HTTP date)."""
    value = headers.get("retry-after", "")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def error_detail(content: bytes, media: str) -> str:
    """The human-readable message of an error body in either format, else its text."""
    if "protobuf" in media:
        try:
            return pb.Error.FromString(content).message or "(no message)"
        except DecodeError:
            pass
    elif "json" in media:
        try:
            body = orjson.loads(content)
        except orjson.JSONDecodeError:
            pass
        else:
            if isinstance(body, dict) and isinstance(body.get("detail"), str):
                return str(body["detail"])
    text = content.decode("utf-8", "replace").strip()
    return " ".join(text.split())[:200] or "(empty answer)"


def api_error(status: int, content: bytes, media: str, headers: Mapping[str, str]) -> ApiError:
    cls = BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
    return cls(status, error_detail(content, media), retry_after(headers))
