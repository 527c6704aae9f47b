"""OpenAI-compatible images and models: POST /v1/images/generations (JSON, or a stream of
``image_generation.partial_image`` and ``image_generation.completed`` events), GET /v1/models
and /v1/models/{id}, and the files behind ``response_format: url``.

Answers like OpenAI (``created``, ``data[].b64_json`` or ``url``), so the official ``openai``
client works unchanged. steadygen's extensions (steps, seed, guidance, negative_prompt) go in
the same body (``extra_body`` in the client).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response
from sse_starlette import EventSourceResponse

from steadygen.queue.job import Job, JobEvent
from steadygen.request import GenerationRequest, parse_size
from steadygen.server import image_formats
from steadygen.server.results import image_paths, require_success
from steadygen.server.schemas import OpenAIImageRequest, error_responses, stream_response
from steadygen.server.service import Service

EVENT_WAIT_S = 15.0


def router(service: Service) -> APIRouter:
    api = APIRouter(tags=["openai"])
    started = int(time.time())

    def card(model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": started, "owned_by": "steadygen"}

    @api.get("/v1/models", responses=error_responses(401))
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [card(service.model_name)]}

    @api.get("/v1/models/{model_id}", responses=error_responses(401, 404))
    async def model(model_id: str) -> dict[str, Any]:
        if model_id != service.model_name:
            raise HTTPException(404, f"model: no model {model_id!r} here; this server serves "
                                     f"{service.model_name!r}")
        return card(model_id)

    @api.post("/v1/images/generations", responses={
        **stream_response("text/event-stream", "With stream: partial images, then each "
                                               "image (Server-Sent Events)."),
        **error_responses(400, 401, 409, 413, 429, 500, 503, 507)})
    async def generate(body: OpenAIImageRequest, request: Request) -> Any:
        raw: dict[str, Any] = {
            "prompt": body.prompt,
            "n": body.n,
            "model": body.model,
            "steps": body.steps,
            "seed": body.seed,
            "guidance": body.guidance,
            "negative_prompt": body.negative_prompt,
            "preview": bool(body.stream and body.partial_images),
        }
        if body.size and body.size != "auto":
            raw["width"], raw["height"] = parse_size(body.size)
        req = service.validate(raw)
        job = await asyncio.to_thread(service.queue.submit, req)
        if body.stream:
            return EventSourceResponse(_stream(service, req, body, job), ping=EVENT_WAIT_S)
        job = await service.queue.wait(job.id)
        require_success(job)
        fmt = body.output_format or "png"
        if body.response_format == "url":
            base = str(request.base_url).rstrip("/")
            quality = f"?compression={body.output_compression}" \
                if body.output_compression is not None and fmt != "png" else ""
            n = len((job.result or {}).get("images", []))
            data = [{"url": f"{base}/v1/jobs/{job.id}/images/{k}.png" if fmt == "png"
                     else f"{base}/v1/images/files/{job.id}/{k}.{fmt}{quality}"}
                    for k in range(n)]
        else:
            encoded = await asyncio.to_thread(_encoded, service, job, fmt,
                                              body.output_compression)
            data = [{"b64_json": b} for b in encoded]
        for item in data:
            item["revised_prompt"] = req.prompt
        return {"created": int(job.created_at or time.time()), "data": data,
                "output_format": fmt, "size": req.size}

    @api.get("/v1/images/files/{job_id}/{index}.{fmt}", response_class=Response, responses={
        200: {"description": "The image in the format its name ends with.",
              "content": {media: {} for media in image_formats.MEDIA_TYPES.values()}},
        **error_responses(400, 401, 404)})
    async def image_file(job_id: str, index: int, fmt: str,
                         compression: int | None = Query(None, ge=0, le=100)) -> Response:
        if fmt not in image_formats.MEDIA_TYPES:
            raise HTTPException(404, f"fmt: no format {fmt!r}; png, jpeg or webp")
        job = await asyncio.to_thread(service.queue.get, job_id)
        paths = image_paths(service.images_dir, job)
        if not 0 <= index < len(paths) or not paths[index].is_file():
            raise HTTPException(404, f"index: job {job_id} has no image {index}")
        data = await asyncio.to_thread(image_formats.encode, paths[index], fmt, compression)
        return Response(data, media_type=image_formats.MEDIA_TYPES[fmt])

    return api


def _encoded(service: Service, job: Job, fmt: str, compression: int | None) -> list[str]:
    return [base64.b64encode(image_formats.encode(p, fmt, compression)).decode("ascii")
            for p in image_paths(service.images_dir, job)]


def partial_due(index: int, wanted: int, step: int, steps: int) -> bool:
    """Whether partial image ``index`` (0-based) of ``wanted`` is due at ``step``: they are
    spread evenly over the steps, at most one per step (fewer arrive when steps are few)."""
    return index < wanted and step * (wanted + 1) >= steps * (index + 1)


async def _stream(service: Service, req: GenerationRequest, body: OpenAIImageRequest,
                  job: Job) -> AsyncIterator[dict[str, Any]]:
    """OpenAI's image stream: ``image_generation.partial_image`` events from the live
    previews, then one ``image_generation.completed`` per image; an ``error`` event if the
    job does not succeed."""
    fmt = body.output_format or "png"
    quality = body.output_compression if body.output_compression is not None else 100
    common = {"background": "opaque", "output_format": fmt, "quality": "auto",
              "size": req.size}
    wanted, sent = body.partial_images or 0, 0
    async for event in _job_events(service, job.id):
        preview = event.data.get("preview") if event.type == "step" else None
        if preview and partial_due(sent, wanted, event.data["step"], req.steps):
            image = await asyncio.to_thread(
                image_formats.reencode_bytes, base64.b64decode(preview), fmt, quality)
            yield _sse("image_generation.partial_image", {
                **common, "b64_json": base64.b64encode(image).decode("ascii"),
                "created_at": int(time.time()), "partial_image_index": sent})
            sent += 1
    final = await asyncio.to_thread(service.queue.get, job.id)
    try:
        require_success(final)
    except HTTPException as exc:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        yield _sse("error", {"type": "error", "error": {
            "type": kind, "code": None, "message": str(exc.detail), "param": None}})
        return
    usage = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0,  # not token-metered
             "input_tokens_details": {"image_tokens": 0, "text_tokens": 0}}
    for b64 in await asyncio.to_thread(_encoded, service, final, fmt, body.output_compression):
        yield _sse("image_generation.completed", {
            **common, "b64_json": b64, "created_at": int(time.time()), "usage": usage})


def _sse(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"event": kind, "data": json.dumps({"type": kind, **data})}


async def _job_events(service: Service, job_id: str) -> AsyncIterator[JobEvent]:
    """The job's events from its start until its end, live (step events included)."""
    queue = service.queue
    sub = queue.open_events(job_id)
    sent: tuple[int, int] = (-1, -1)
    try:
        for event in await asyncio.to_thread(queue.events_since, job_id, sent):
            yield event
            sent = event.key
            if event.terminal:
                return
        while True:
            try:
                event = await asyncio.wait_for(sub.get(), timeout=EVENT_WAIT_S)
            except TimeoutError:
                job = await asyncio.to_thread(queue.get, job_id)
                if job.state.terminal:
                    return
                continue
            if event.key <= sent:
                continue
            yield event
            sent = event.key
            if event.terminal:
                return
    finally:
        sub.close()
