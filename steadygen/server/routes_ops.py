"""GET /healthz (the process answers), GET /readyz (model loaded and warm), GET /metrics."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from steadygen.server.metrics import CONTENT_TYPE
from steadygen.server.schemas import error_responses, stream_response
from steadygen.server.service import Service


def router(service: Service) -> APIRouter:
    api = APIRouter(tags=["ops"])

    @api.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True}

    @api.get("/readyz", responses={503: {"description": "Not ready (the same body, ready false)."}})
    async def readyz() -> JSONResponse:
        state = service.state()
        body = {"ready": state.ready, "model": service.model_name, "device": service.device,
                "default_side": service.default_side, "limits": asdict(service.limits),
                **state.to_dict()}
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @api.get("/metrics", response_class=Response, responses={
        **stream_response(CONTENT_TYPE.split(";")[0], "Prometheus text format 0.0.4."),
        **error_responses(401)})
    async def metrics() -> Response:
        body = await asyncio.to_thread(service.metrics.render)  # it reads the job store
        return Response(body, media_type=CONTENT_TYPE)

    return api
