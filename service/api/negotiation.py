"""Content negotiation in one place: request bodies in JSON or protobuf, responses and errors
in whichever format `Accept` asks for (JSON by default)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from google.protobuf.message import DecodeError, Message
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from service.api.bulkbody import Verdict, json_entries, protobuf_entries
from service.api.schemas import Mirrored
from service.errors import Invalid, UnsupportedMediaType
from service.pb import duckcast_pb2 as pb
from service.wire import proto_fields

JSON = "application/json"
PROTOBUF = "application/protobuf"  # RFC 9996
PROTOBUF_TYPES = (PROTOBUF, "application/x-protobuf")  # and the older alias the seeds use

M = TypeVar("M", bound=BaseModel)


class BadRequest(Invalid):
    status = 400


def response_type(request: Request) -> str:
    """The protobuf media type the client named in Accept (echoed back), else JSON."""
    return accepted(request.headers.get("accept", ""))


def accepted(accept: str) -> str:
    """response_type() of a request whose first Accept header is `accept` ("": none)."""
    if "protobuf" in accept:
        for part in accept.split(","):
            media = part.split(";", 1)[0].strip().lower()
            if media in PROTOBUF_TYPES:
                return media
    return JSON


def render(
    request: Request,
    message: Message,
    to_json: Callable[[Any], Any],
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    media = response_type(request)
    body = orjson.dumps(to_json(message)) if media == JSON else message.SerializeToString()
    return Response(body, status_code=status, media_type=media, headers=headers)


def render_error(
    request: Request, status: int, message: str, headers: dict[str, str] | None = None
) -> Response:
    media = response_type(request)
    if media == JSON:
        body = orjson.dumps({"detail": message})
    else:
        body = pb.Error(code=status, message=message).SerializeToString()
    return Response(body, status_code=status, media_type=media, headers=headers)


async def parse_body(
    request: Request, model: type[M], message: type[Message], max_items: int | None = None
) -> M:
    """The body as `model`, from JSON or protobuf. `max_items`: the body is a list of at most
    that many entries, counted before it is decoded (service.api.bulkbody)."""
    return validated(model, await body_data(request, message, max_items))


async def body_data(request: Request, message: type[Message], max_items: int | None = None) -> Any:
    """The body decoded from JSON or protobuf (a message as its set fields), not validated."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    body = await request.body()
    data: Any
    if media == JSON or media.endswith("+json"):
        if max_items is not None:
            _check_entries(json_entries(body, max_items), max_items)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"body: malformed JSON ({exc})") from None
    elif media in PROTOBUF_TYPES:
        if max_items is not None:
            _check_entries(protobuf_entries(body, max_items), max_items)
        try:
            decoded = message.FromString(body)
        except DecodeError:
            raise BadRequest(f"body: undecodable {message.DESCRIPTOR.name} protobuf") from None
        data = proto_fields(decoded)
    else:
        raise UnsupportedMediaType(
            f"Content-Type must be {JSON}, {PROTOBUF} or application/x-protobuf"
        )
    return data


def validated(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Invalid(validation_message(exc)) from None


def _check_entries(verdict: Verdict, limit: int) -> None:
    if verdict == "too many":
        raise Invalid(f"items: at most {limit} items")
    if verdict == "too complex":
        raise BadRequest(f"body: more JSON structure than {limit} items can have")


def validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"] if p not in ("body", "query", "path"))
        parts.append(f"{loc or 'body'}: {err['msg']}")
    return "; ".join(parts)


def protobuf_media(model: type[Mirrored]) -> dict[str, Any]:
    """The OpenAPI media type entry of a protobuf body: which message of protos/ it is."""
    name = model.protobuf_message.DESCRIPTOR.full_name
    return {
        "schema": {
            "type": "string",
            "format": "binary",
            "description": f"a serialized `{name}` (GET /protos/duckcast.proto)",
        },
        "x-protobuf-message": name,
    }


def documented(
    request_model: type[Mirrored] | None = None,
    response_model: type[Mirrored] | None = None,
    status: int = 200,
    *,
    request_headers: dict[str, str] | None = None,
    response_headers: dict[str, str] | None = None,
    errors: dict[int, str] | None = None,
) -> dict[str, Any]:
    """Route kwargs that make OpenAPI list both JSON and protobuf for body and response,
    naming the protobuf message of each (`x-protobuf-message`, from the model's
    `protobuf_message`), and the optional request and response headers (name: description)
    and error statuses."""
    kwargs: dict[str, Any] = {"status_code": status}
    responses: dict[int | str, Any] = {}
    if response_model is not None:
        binary = protobuf_media(response_model)
        responses[status] = {
            "model": response_model,
            "content": {PROTOBUF: binary, "application/x-protobuf": binary},
        }
    if response_headers:
        responses.setdefault(status, {})["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in response_headers.items()
        }
    for code, text in (errors or {}).items():
        responses[code] = {"description": text}
    if responses:
        kwargs["responses"] = responses
    extra: dict[str, Any] = {}
    if request_model is not None:
        binary = protobuf_media(request_model)
        extra["requestBody"] = {
            "required": True,
            "content": {
                JSON: {"schema": request_model.model_json_schema()},
                PROTOBUF: binary,
                "application/x-protobuf": binary,
            },
        }
    if request_headers:
        extra["parameters"] = [
            {
                "name": name,
                "in": "header",
                "required": False,
                "description": text,
                "schema": {"type": "string"},
            }
            for name, text in request_headers.items()
        ]
    if extra:
        kwargs["openapi_extra"] = extra
    return kwargs
