"""`/docs`: Swagger UI served from the `swagger-ui-bundle-v2` package (no CDN: it works offline),
with its start-up call in a static script so the page keeps a strict CSP."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from starlette.responses import FileResponse, HTMLResponse, Response
from swagger_ui_bundle import swagger_ui_path

from service.api import csp
from service.errors import NotFound

router = APIRouter(include_in_schema=False)

SWAGGER_DIR = Path(swagger_ui_path)
# Only what the page loads: the package also ships Swagger's demo page (pointing at a petstore).
SWAGGER_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Duckcast API</title>
  <link rel="icon" type="image/png" href="/docs/assets/favicon-32x32.png">
  <link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui" data-spec="/openapi.json"></div>
  <noscript>The API description is at <a href="/openapi.json">/openapi.json</a>.</noscript>
  <script src="/docs/assets/swagger-ui-bundle.js"></script>
  <script src="/static/docs.js"></script>
</body>
</html>
"""


@router.get("/docs")
async def docs() -> Response:
    return HTMLResponse(
        DOCS_PAGE, headers={"Content-Security-Policy": csp.DOCS, "Cache-Control": "no-cache"}
    )


@router.get("/docs/assets/{name}")
async def docs_asset(name: str) -> Response:
    media_type = SWAGGER_ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"no docs asset named {name}")
    return FileResponse(SWAGGER_DIR / name, media_type=media_type)
