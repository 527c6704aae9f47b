"""AUTOMATIC1111-compatible routes, enough for the many clients that speak its API:
POST /sdapi/v1/txt2img, GET /sdapi/v1/progress, POST /sdapi/v1/interrupt,
GET /sdapi/v1/sd-models."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import APIRouter

from steadygen.editing import lora_fields
from steadygen.engine.outputs import SAMPLER_NAME
from steadygen.server.results import b64_images, require_success
from steadygen.server.schemas import A1111Txt2Img, error_responses
from steadygen.server.service import Service


def router(service: Service) -> APIRouter:
    api = APIRouter(tags=["automatic1111"], responses=error_responses(401))
    queue = service.queue

    @api.post("/sdapi/v1/txt2img",
              responses=error_responses(400, 401, 409, 413, 429, 500, 503, 507))
    async def txt2img(body: A1111Txt2Img) -> dict[str, Any]:
        raw = {
            "prompt": body.prompt,
            "negative_prompt": body.negative_prompt,
            "width": body.width,
            "height": body.height,
            "steps": body.steps,
            "guidance": body.cfg_scale,
            "seed": None if body.seed == -1 else body.seed,  # A1111: -1 means random
            "n": body.batch_size * body.n_iter,
        }
        raw.update(lora_fields(body.prompt))  # <lora:name:weight> in the prompt
        req = service.validate(raw)
        job = await asyncio.to_thread(queue.submit, req)
        job = await queue.wait(job.id)
        require_success(job)
        images = await asyncio.to_thread(b64_images, service.images_dir, job)
        info = {
            "prompt": req.prompt,
            "negative_prompt": req.negative_prompt,
            "all_prompts": [req.prompt] * req.n,
            "seed": req.seed,
            "all_seeds": req.image_seeds,
            "width": req.width,
            "height": req.height,
            "steps": req.steps,
            "cfg_scale": req.guidance,
            "sampler_name": SAMPLER_NAME,
            "sd_model_name": req.model,
            "batch_size": req.n,
            "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.created_at)),
            "steadygen_job": job.id,
            "timings": (job.result or {}).get("timings"),
        }
        return {"images": images, "parameters": body.model_dump(), "info": json.dumps(info)}

    @api.get("/sdapi/v1/progress")
    async def progress() -> dict[str, Any]:
        running = queue.running()
        depth = await asyncio.to_thread(queue.depth)
        if not running:
            return {
                "progress": 0.0,
                "eta_relative": 0.0,
                "state": _state(None, depth),
                "current_image": None,
                "textinfo": None,
            }
        p = running[0]
        frac = p.step / p.steps if p.steps else 0.0
        return {
            "progress": round(frac, 4),
            "eta_relative": round(p.eta_s or 0.0, 3),
            "state": _state(p, depth + len(running)),
            "current_image": None,
            "textinfo": f"step {p.step}/{p.steps}",
        }

    @api.post("/sdapi/v1/interrupt")
    async def interrupt() -> dict[str, Any]:
        for p in queue.running():
            await asyncio.to_thread(queue.cancel, p.job_id)
        return {}

    @api.get("/sdapi/v1/sd-models")
    async def sd_models() -> list[dict[str, Any]]:
        return [{"title": service.model_name, "model_name": service.model_name, "hash": None,
                 "sha256": None, "filename": "", "config": None}]

    return api


def _state(p: Any, job_count: int) -> dict[str, Any]:
    return {
        "skipped": False,
        "interrupted": False,
        "job": p.job_id if p else "",
        "job_count": job_count,
        "job_timestamp": "0",
        "job_no": 0,
        "sampling_step": p.step if p else 0,
        "sampling_steps": p.steps if p else 0,
    }
