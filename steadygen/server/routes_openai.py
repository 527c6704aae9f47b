"""OpenAI-compatible image generation: POST /v1/images/generations.

Waits for the job and answers like OpenAI (``created``, ``data[].b64_json`` or ``url``),
so the official ``openai`` client works unchanged. steadygen's extensions (steps, seed,
guidance, negative_prompt) go in the same body (``extra_body`` in the client).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request

from steadygen.request import parse_size
from steadygen.server.results import b64_images, require_success
from steadygen.server.schemas import OpenAIImageRequest, error_responses
from steadygen.server.service import Service


def router(service: Service) -> APIRouter:
    api = APIRouter(tags=["openai"])

    @api.post("/v1/images/generations",
              responses=error_responses(400, 401, 409, 413, 429, 500, 503, 507))
    async def generate(body: OpenAIImageRequest, request: Request) -> dict[str, Any]:
        raw: dict[str, Any] = {
            "prompt": body.prompt,
            "n": body.n,
            "model": body.model,
            "steps": body.steps,
            "seed": body.seed,
            "guidance": body.guidance,
            "negative_prompt": body.negative_prompt,
        }
        if body.size and body.size != "auto":
            raw["width"], raw["height"] = parse_size(body.size)
        req = service.validate(raw)
        job = await asyncio.to_thread(service.queue.submit, req)
        job = await service.queue.wait(job.id)
        require_success(job)
        if body.response_format == "url":
            base = str(request.base_url).rstrip("/")
            n = len((job.result or {}).get("images", []))
            data = [{"url": f"{base}/v1/jobs/{job.id}/images/{k}.png"} for k in range(n)]
        else:
            images = await asyncio.to_thread(b64_images, service.images_dir, job)
            data = [{"b64_json": b} for b in images]
        for item in data:
            item["revised_prompt"] = req.prompt
        return {"created": int(job.created_at or time.time()), "data": data}

    return api
