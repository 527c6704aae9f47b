"""The web page at ``/``: static files shipped in the package, built only on the public API."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse, Response

from steadygen.server.service import Service

_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


def _asset(name: str) -> bytes:
    return resources.files("steadygen.server").joinpath("web", name).read_bytes()


def router(service: Service) -> APIRouter:
    api = APIRouter(tags=["web"], include_in_schema=False)

    @api.get("/")
    async def index() -> HTMLResponse:
        return HTMLResponse(_asset("index.html"))

    @api.get("/static/{name}")
    async def static(name: str) -> Response:
        suffix = name[name.rfind("."):] if "." in name else ""
        if "/" in name or name.startswith(".") or suffix not in _TYPES:
            raise HTTPException(404, f"name: no static file {name!r}")
        try:
            body = _asset(name)
        except (FileNotFoundError, IsADirectoryError):
            raise HTTPException(404, f"name: no static file {name!r}") from None
        return Response(body, media_type=_TYPES[suffix])

    return api
