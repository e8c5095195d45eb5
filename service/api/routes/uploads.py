"""Uploads: size-limited, stored under random names (the client's name never touches the
filesystem, so there is no path traversal), served back with headers that stop a browser from
running what it fetched.

Each upload is recorded in the store with its owner, against a per-user byte quota and rate
(the store counts, so every worker sees the same totals); only the owner may delete it.
Files are public to whoever has the URL: the name holds 128 random bits, so the URL is the
capability (README "Uploads")."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
import re
import secrets
import shutil
from pathlib import Path, PurePosixPath
from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParam
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from service.api.deps import CurrentUser, SettingsDep, StoreDep
from service.api.negotiation import BadRequest, documented, render
from service.api.schemas import UploadOut
from service.errors import DuckcastError, NotFound, PayloadTooLarge
from service.wire import upload_json

router = APIRouter(tags=["uploads"])
logger = logging.getLogger(__name__)

_EXT = re.compile(r"^\.[a-z0-9]{1,10}$")
STORED_NAME = r"^[0-9a-f]{32}(\.[a-z0-9]{1,10})?$"


def safe_extension(filename: str | None) -> str:
    suffix = PurePosixPath((filename or "").replace("\\", "/")).suffix.lower()
    return suffix if _EXT.match(suffix) else ""


def _save(upload: UploadFile, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    upload.file.seek(0)
    with open(dest, "xb") as out:
        shutil.copyfileobj(upload.file, out)


@router.post(
    "/api/upload",
    **documented(response_model=UploadOut, status=201),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {"file": {"type": "string", "format": "binary"}},
                    }
                }
            },
        }
    },
)
async def upload(
    request: Request, user_id: CurrentUser, settings: SettingsDep, store: StoreDep
) -> Response:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BadRequest("body: send multipart/form-data with a 'file' field")
    async with request.form(max_files=1, max_fields=10) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise BadRequest("file: a multipart file field named 'file' is required")
        size = upload.size or 0
        if size > settings.upload_max_bytes:
            raise PayloadTooLarge(f"file: larger than the {settings.upload_max_bytes} byte limit")
        name = secrets.token_hex(16) + safe_extension(upload.filename)
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        # Recorded first: the store refuses over quota or rate before a byte is written.
        result = await store.record_upload(user_id, name, size, content_type)
        try:
            await asyncio.to_thread(_save, upload, settings.uploads_dir / name)
        except BaseException:
            with contextlib.suppress(DuckcastError):  # else it counts against the quota
                await store.delete_upload(user_id, name)
            raise
    return render(request, result, upload_json, 201)


@router.delete(
    "/api/uploads/{name}",
    status_code=204,
    responses={403: {"description": "not the owner"}, 404: {"description": "no such upload"}},
)
async def delete_upload(
    name: Annotated[str, PathParam(pattern=STORED_NAME)],
    user_id: CurrentUser,
    settings: SettingsDep,
    store: StoreDep,
) -> Response:
    """Deletes an upload of the caller's: 204; 403 if another user's; 404 if unknown."""
    await store.delete_upload(user_id, name)
    with contextlib.suppress(FileNotFoundError):
        await asyncio.to_thread((settings.uploads_dir / name).unlink)
    return Response(status_code=204)


@router.get("/uploads/{name}", include_in_schema=False)
async def uploaded(
    name: Annotated[str, PathParam(pattern=STORED_NAME)], settings: SettingsDep
) -> Response:
    path = settings.uploads_dir / name
    if not path.is_file():
        raise NotFound("no such upload")
    return FileResponse(
        path,
        headers={
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "sandbox; default-src 'none'",
            "Cache-Control": "public, max-age=31536000, immutable",
        },
    )
