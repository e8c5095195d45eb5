"""Content-Security-Policy of the two HTML pages the service serves: the browser app (`/`) and
the API docs (`/docs`). Everything they load comes from this origin, and neither page carries
an inline script or style, so an injected `<script>` or `style=` attribute does not run.

protobuf.js compiles decoders with `new Function` (its codegen); the app decodes by walking
the reflected schema instead (static/js/proto.js), so the app needs no 'unsafe-eval' either.
"""

from __future__ import annotations

_COMMON = (
    "default-src 'self'",
    "script-src 'self'",
    "connect-src 'self'",  # fetch, EventSource and the same-origin WebSocket
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
)

APP = "; ".join((*_COMMON, "style-src 'self'", "img-src 'self'"))

# Swagger UI sets style attributes from React and draws its icons as data: SVGs in its CSS.
# Style attributes are CSSOM writes, which 'self' allows; the data: images need saying.
DOCS = "; ".join((*_COMMON, "style-src 'self'", "img-src 'self' data:"))
