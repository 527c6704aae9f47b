"""GET /healthz (the process answers), GET /readyz (model loaded and warm), GET /metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from steadygen.server.metrics import CONTENT_TYPE
from steadygen.server.service import Service


def router(service: Service) -> APIRouter:
    api = APIRouter(tags=["ops"])

    @api.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True}

    @api.get("/readyz")
    async def readyz() -> JSONResponse:
        state = service.state()
        body = {"ready": service.ready(), "model": service.model_name, "device": service.device,
                **{k: v for k, v in state.items() if k in ("loaded", "warm", "accepting", "error")}}
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @api.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    return api
