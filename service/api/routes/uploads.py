"""Uploads: size-limited, stored under random names (the client's name never touches the
filesystem, so there is no path traversal), served back with headers that stop a browser from
running what it fetched."""

from __future__ import annotations

import asyncio
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

from service.api.deps import CurrentUser, SettingsDep
from service.api.negotiation import BadRequest, documented, render
from service.api.schemas import UploadOut
from service.errors import NotFound, PayloadTooLarge
from service.pb import duckcast_pb2 as pb
from service.wire import upload_json

router = APIRouter(tags=["uploads"])

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
async def upload(request: Request, _: CurrentUser, settings: SettingsDep) -> Response:
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
        await asyncio.to_thread(_save, upload, settings.uploads_dir / name)
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    result = pb.UploadResult(
        filename=name, url=f"/uploads/{name}", size=size, content_type=content_type
    )
    return render(request, result, upload_json, 201)


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
