"""The native job API: submit, look up, list, cancel, follow (SSE), fetch images."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from sse_starlette import EventSourceResponse

from steadygen.errors import FieldError, InvalidRequest
from steadygen.queue.job import Job, JobEvent, JobState, parse_event_id
from steadygen.request import parse_size
from steadygen.server.routes_edits import store_json_inputs
from steadygen.server.schemas import JobCreate, error_responses, stream_response
from steadygen.server.service import Service

SSE_PING_S = 15


def job_view(service: Service, job: Job) -> dict[str, Any]:
    view = job.to_public()
    view["position"] = service.queue.position(job)
    eta = service.queue.eta_s(job)
    view["eta_s"] = round(eta, 3) if eta is not None else None
    for p in service.queue.running():
        if p.job_id == job.id:
            view["progress"] = {"step": p.step, "steps": p.steps}
    return view


def event_payload(event: JobEvent) -> dict[str, Any]:
    return {"id": event.id, "event": event.type,
            "data": json.dumps({"job_id": event.job_id, **event.data})}


def raw_from_body(body: JobCreate) -> dict[str, Any]:
    raw = body.model_dump(exclude={"priority", "size"}, exclude_none=True)
    if body.size is not None:
        if body.width is not None or body.height is not None:
            raise InvalidRequest([FieldError("size", "give either size or width and height")])
        raw["width"], raw["height"] = parse_size(body.size)
    return raw


def router(service: Service) -> APIRouter:
    api = APIRouter(tags=["jobs"])
    queue = service.queue

    @api.post("/v1/jobs", status_code=202,
              responses=error_responses(400, 401, 413, 429, 503, 507))
    async def create_job(body: JobCreate) -> JSONResponse:
        raw = await asyncio.to_thread(store_json_inputs, raw_from_body(body), service.limits)
        req = service.validate(raw)
        job = await asyncio.to_thread(queue.submit, req, body.priority)
        view = await asyncio.to_thread(job_view, service, job)
        return JSONResponse(
            view, status_code=202, headers={"Location": f"/v1/jobs/{job.id}"}
        )

    @api.get("/v1/jobs", responses=error_responses(400, 401))
    async def list_jobs(
        limit: int = Query(50, description="1 to 500"),
        state: str | None = Query(
            None, description="queued, running, succeeded, failed, cancelled"
        ),
    ) -> dict[str, Any]:
        if not 1 <= limit <= 500:
            raise InvalidRequest([FieldError("limit", f"must be from 1 to 500 (got {limit})")])
        chosen = None
        if state is not None:
            try:
                chosen = JobState(state)
            except ValueError:
                names = ", ".join(s.value for s in JobState)
                raise InvalidRequest(
                    [FieldError("state", f"must be one of {names} (got {state!r})")]
                ) from None
        jobs = await asyncio.to_thread(queue.list, limit, chosen)
        views = await asyncio.to_thread(lambda: [job_view(service, j) for j in jobs])
        return {"jobs": views}

    @api.get("/v1/jobs/{job_id}", responses=error_responses(401, 404))
    async def get_job(job_id: str) -> dict[str, Any]:
        job = await asyncio.to_thread(queue.get, job_id)
        return await asyncio.to_thread(job_view, service, job)

    @api.delete("/v1/jobs/{job_id}", responses=error_responses(401, 404))
    async def cancel_job(job_id: str) -> dict[str, Any]:
        job = await asyncio.to_thread(queue.cancel, job_id)
        return await asyncio.to_thread(job_view, service, job)

    @api.get("/v1/jobs/{job_id}/events", response_class=EventSourceResponse, responses={
        **stream_response("text/event-stream", "The job's events (Server-Sent Events)."),
        **error_responses(401, 404)})
    async def job_events(
        job_id: str,
        request: Request,
        last_event_id: str | None = Header(None),
        after: str | None = Query(None, description="resume after this event id"),
    ) -> EventSourceResponse:
        await asyncio.to_thread(queue.get, job_id)  # 404 before the stream starts
        start = parse_event_id(last_event_id or after)
        return EventSourceResponse(_follow(service, job_id, start, request), ping=SSE_PING_S)

    @api.get("/v1/jobs/{job_id}/images/{index}.png", response_class=FileResponse, responses={
        **stream_response("image/png", "The PNG, with its parameters inside."),
        **error_responses(400, 401, 404)})
    async def job_image(job_id: str, index: int) -> FileResponse:
        job = await asyncio.to_thread(queue.get, job_id)
        images = (job.result or {}).get("images", [])
        missing = HTTPException(404, f"index: job {job_id} has no image {index}")
        if not 0 <= index < len(images):
            raise missing
        root = service.images_dir.resolve()
        path = (root / images[index]).resolve()
        if root not in path.parents or not path.is_file():
            raise missing
        return FileResponse(path, media_type="image/png")

    return api


async def _follow(
    service: Service, job_id: str, start: tuple[int, int], request: Request
) -> AsyncIterator[dict[str, Any]]:
    queue = service.queue
    sub = queue.open_events(job_id)
    try:
        sent = start
        for event in await asyncio.to_thread(queue.events_since, job_id, start):
            yield event_payload(event)
            sent = event.key
            if event.terminal:
                return
        while True:
            try:
                event = await asyncio.wait_for(sub.get(), timeout=SSE_PING_S)
            except TimeoutError:
                if await request.is_disconnected():
                    return
                job = await asyncio.to_thread(queue.get, job_id)
                if job.state.terminal:  # ended in another process, or an event was missed
                    for late in await asyncio.to_thread(queue.events_since, job_id, sent):
                        yield event_payload(late)
                        sent = late.key
                    return
                continue
            if event.key <= sent:
                continue
            yield event_payload(event)
            sent = event.key
            if event.terminal:
                return
    finally:
        sub.close()
