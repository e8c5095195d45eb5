"""The two HTML pages (`/` and `/docs`) and what they load: served by the service itself, with
a strict Content-Security-Policy, nothing from a CDN. Chromium renders them in tests/browser."""

from __future__ import annotations

import re

import httpx

from service.api import csp
from service.api.routes.ops import STATIC


def _directives(policy: str) -> dict[str, str]:
    return dict(part.strip().split(" ", 1) for part in policy.split(";"))


async def test_pages_carry_a_strict_csp(client: httpx.AsyncClient) -> None:
    """/ and /docs allow scripts, styles and connections from this origin only: no inline
    code, no eval, no framing."""
    for path, policy in (("/", csp.APP), ("/docs", csp.DOCS)):
        r = await client.get(path)
        assert r.status_code == 200
        assert r.headers["content-security-policy"] == policy
        directives = _directives(policy)
        for name in ("default-src", "script-src", "style-src", "connect-src"):
            assert directives[name] == "'self'", (path, name)
        assert directives["frame-ancestors"] == "'none'"
        assert "unsafe" not in policy


async def test_pages_load_nothing_from_elsewhere(client: httpx.AsyncClient) -> None:
    """Every script, stylesheet and icon the pages name is a path on this service, and each
    of them is served."""
    for path in ("/", "/docs"):
        html = (await client.get(path)).text
        refs = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert refs, path
        for ref in refs:
            assert ref.startswith(("/", "#")) and not ref.startswith("//"), (path, ref)
            if ref.startswith(("/static/", "/docs/assets/")):
                assert (await client.get(ref)).status_code == 200, ref
        assert "<script>" not in html and "<style" not in html and " style=" not in html


async def test_app_modules_are_revalidated(client: httpx.AsyncClient) -> None:
    """The app's modules are served as JavaScript with `no-cache`: a browser asks again (a
    304 by ETag) instead of running yesterday's code after an upgrade."""
    r = await client.get("/static/js/app.js")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/javascript")
    assert r.headers["cache-control"] == "no-cache"
    again = await client.get("/static/js/app.js", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304


async def test_static_files_have_no_inline_styles(client: httpx.AsyncClient) -> None:
    """No HTML or script under static/ writes a style attribute or an inline <style>/<script>
    (the CSP would refuse it)."""
    for path in STATIC.rglob("*"):
        if path.suffix in (".html", ".js") and "vendor" not in path.parts:
            text = path.read_text()
            inline = r"\sstyle=|<style|setAttribute\(\s*[\"']style|\.innerHTML\s*="
            assert not re.search(inline, text), path


async def test_docs_assets_are_only_swagger_ui(client: httpx.AsyncClient) -> None:
    """/docs/assets/ serves Swagger UI's bundle and stylesheet from the installed package and
    nothing else of it (not its demo page)."""
    r = await client.get("/docs/assets/swagger-ui-bundle.js")
    assert r.status_code == 200
    assert "SwaggerUIBundle" in r.text[:100_000]
    for name in ("index.html", "swagger-initializer.js", "..%2F__init__.py", "nosuch.js"):
        assert (await client.get(f"/docs/assets/{name}")).status_code == 404, name
    assert (await client.get("/redoc")).status_code == 404  # it loaded from a CDN
