"""The web page at ``/``: static files shipped in the package, built only on the public API.

The page is plain HTML, CSS and ES modules (``steadygen/server/web/``): no build step and no
third-party code. Files are answered with an ETag and ``Cache-Control: no-cache``, so a
browser revalidates them (a 304 when unchanged) and an upgraded server is seen at once. The
page carries a Content-Security-Policy that allows only this origin's scripts, styles and
API, plus ``blob:`` images (used when an API key is set: ``<img>`` cannot send one).
"""

from __future__ import annotations

import hashlib
from importlib import resources

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from steadygen.server.service import Service

_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".html": "text/html; charset=utf-8",
}

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


def _asset(name: str) -> tuple[bytes, str]:
    """A file of the page and its ETag. Read on each request (the files are small), so an
    edit to the page shows on reload without restarting the server."""
    body = resources.files("steadygen.server").joinpath("web", name).read_bytes()
    return body, '"' + hashlib.sha256(body).hexdigest()[:20] + '"'


def _answer(request: Request, name: str, media_type: str) -> Response:
    body, etag = _asset(name)
    headers = {
        "ETag": etag,
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
    }
    if media_type.startswith("text/html"):
        headers["Content-Security-Policy"] = CSP
        headers["Referrer-Policy"] = "no-referrer"
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


def router(service: Service) -> APIRouter:
    api = APIRouter(tags=["web"], include_in_schema=False)

    @api.get("/")
    async def index(request: Request) -> Response:
        return _answer(request, "index.html", _TYPES[".html"])

    @api.get("/static/{name}")
    async def static(name: str, request: Request) -> Response:
        suffix = name[name.rfind("."):] if "." in name else ""
        if "/" in name or "\\" in name or name.startswith(".") or suffix not in _TYPES:
            raise HTTPException(404, f"name: no static file {name!r}")
        try:
            return _answer(request, name, _TYPES[suffix])
        except (FileNotFoundError, IsADirectoryError):
            raise HTTPException(404, f"name: no static file {name!r}") from None

    return api
