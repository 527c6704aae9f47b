"""GET /v1/telemetry (the latest sample) and GET /v1/telemetry/stream (SSE).

The stream is everything a dashboard needs on one connection: a ``sample`` event about
once a second (GPU and host readings, queue depth, the running job's progress) and a
``job`` event each time a job ends (for the latency timeline).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request
from sse_starlette import EventSourceResponse

from steadygen.errors import FieldError, InvalidRequest
from steadygen.server.schemas import error_responses, stream_response
from steadygen.server.service import Service


def snapshot(service: Service) -> dict[str, Any]:
    sample = service.sampler.latest() if service.sampler is not None else None
    queue = service.queue
    return {
        "t_wall": time.time(),
        "sample": sample.to_dict() if sample is not None else None,
        "gpu_backend": getattr(service.sampler, "gpu_backend_name", "none"),
        "queue_depth": queue.depth(),
        "running": [
            {"job_id": p.job_id, "step": p.step, "steps": p.steps, "eta_s": p.eta_s}
            for p in queue.running()
        ],
    }


def router(service: Service) -> APIRouter:
    api = APIRouter(tags=["telemetry"], responses=error_responses(401))

    @api.get("/v1/telemetry")
    async def latest() -> dict[str, Any]:
        return await asyncio.to_thread(snapshot, service)

    @api.get("/v1/telemetry/stream", response_class=EventSourceResponse, responses={
        **stream_response("text/event-stream", "Samples and job ends (Server-Sent Events)."),
        **error_responses(400)})
    async def stream(
        request: Request, interval: float = Query(1.0, description="seconds, 0.2 to 10")
    ) -> EventSourceResponse:
        if not 0.2 <= interval <= 10:
            raise InvalidRequest(
                [FieldError("interval", f"must be from 0.2 to 10 seconds (got {interval:g})")]
            )
        return EventSourceResponse(_stream(service, interval, request), ping=15)

    return api


async def _stream(service: Service, interval: float, request: Request) -> AsyncIterator[dict]:
    sub = service.queue.open_events(None)
    try:
        next_sample = 0.0
        while True:
            now = time.monotonic()
            if now >= next_sample:
                if await request.is_disconnected():
                    return
                data = await asyncio.to_thread(snapshot, service)
                yield {"event": "sample", "data": json.dumps(data)}
                next_sample = now + interval
            try:
                event = await asyncio.wait_for(sub.get(), timeout=max(0.01, next_sample - now))
            except TimeoutError:
                continue
            if event.terminal:
                result = event.data.get("result") or {}
                timings = result.get("timings") or {}
                diagnosis = result.get("diagnosis") or {}
                yield {
                    "event": "job",
                    "data": json.dumps({
                        "job_id": event.job_id,
                        "state": event.type,
                        "t_wall": time.time(),
                        "total_s": timings.get("total_s"),
                        "queue_wait_s": timings.get("queue_wait_s"),
                        "main_cause": diagnosis.get("main_cause"),
                        "slow": bool(diagnosis.get("slow")),
                    }),
                }
    finally:
        sub.close()
