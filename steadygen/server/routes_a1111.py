"""AUTOMATIC1111-compatible generation and state, in A1111's own shapes, for the many
clients that speak its API: POST /sdapi/v1/txt2img, GET /sdapi/v1/progress (with the live
preview as ``current_image``), POST /sdapi/v1/interrupt and /skip, GET and POST
/sdapi/v1/options, POST /sdapi/v1/png-info. The read-only lists clients fetch on connect
(samplers, models, ...) are in routes_a1111_info.py.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from typing import Any

from fastapi import APIRouter, Query

from steadygen import __version__
from steadygen.editing import lora_fields
from steadygen.engine.outputs import a1111_parameters, parse_parameters, read_image_text
from steadygen.errors import FieldError, InvalidRequest
from steadygen.request import GenerationRequest
from steadygen.server import a1111_names as names
from steadygen.server.results import b64_images, require_success
from steadygen.server.schemas import A1111PngInfo, A1111Txt2Img, error_responses
from steadygen.server.service import Service


def router(service: Service, live_previews: bool = True) -> APIRouter:
    """``live_previews``: send a preview with each step (A1111's default), for
    ``current_image``; off, the steps cost nothing extra."""
    api = APIRouter(tags=["automatic1111"], responses=error_responses(401))
    queue = service.queue

    @api.post("/sdapi/v1/txt2img",
              responses=error_responses(400, 401, 409, 413, 429, 500, 503, 507))
    async def txt2img(body: A1111Txt2Img) -> dict[str, Any]:
        names.check_sampler("sampler_name", body.sampler_name)
        if not body.sampler_name:
            names.check_sampler("sampler_index", body.sampler_index)
        names.check_scheduler("scheduler", body.scheduler)
        overrides = body.override_settings or {}
        names.check_checkpoint("override_settings.sd_model_checkpoint",
                               overrides.get("sd_model_checkpoint"), service.model_name)
        raw = {
            "prompt": body.prompt,
            "negative_prompt": body.negative_prompt,
            "width": body.width,
            "height": body.height,
            "steps": body.steps,
            "guidance": body.cfg_scale,
            "seed": None if body.seed == -1 else body.seed,  # A1111: -1 means random
            "n": body.batch_size * body.n_iter,
            "preview": live_previews,
        }
        raw.update(lora_fields(body.prompt))  # <lora:name:weight> in the prompt
        req = service.validate(raw)
        job = await asyncio.to_thread(queue.submit, req)
        job = await queue.wait(job.id)
        require_success(job)
        images = []
        if body.send_images:
            images = await asyncio.to_thread(b64_images, service.images_dir, job)
        info = _info(req, service.model_name, job)
        return {"images": images, "parameters": body.model_dump(), "info": json.dumps(info)}

    @api.get("/sdapi/v1/progress", responses=error_responses(400, 401))
    async def progress(
        skip_current_image: bool = Query(False, description="leave current_image out"),
    ) -> dict[str, Any]:
        running = queue.running()
        depth = await asyncio.to_thread(queue.depth)
        if not running:
            return {"progress": 0.0, "eta_relative": 0.0, "state": _state(None, depth),
                    "current_image": None, "textinfo": None}
        p = running[0]
        frac = p.step / p.steps if p.steps else 0.0
        preview = p.preview
        return {
            "progress": round(frac, 4),
            "eta_relative": round(p.eta_s or 0.0, 3),
            "state": _state(p, depth + len(running)),
            "current_image": None if skip_current_image else preview,
            "textinfo": f"step {p.step}/{p.steps}",
        }

    @api.post("/sdapi/v1/interrupt")
    async def interrupt() -> dict[str, Any]:
        for p in queue.running():
            await asyncio.to_thread(queue.cancel, p.job_id)
        return {}

    @api.post("/sdapi/v1/skip")
    async def skip() -> None:
        """A1111 skips the current image of a batch. steadygen denoises a batch's images
        together, so there is no next image to go on to: skip stops the running job, like
        interrupt."""
        for p in queue.running():
            await asyncio.to_thread(queue.cancel, p.job_id)

    @api.get("/sdapi/v1/options")
    async def get_options() -> dict[str, Any]:
        return options(service.model_name, live_previews)

    @api.post("/sdapi/v1/options", responses=error_responses(400, 401, 409))
    async def set_options(body: dict[str, Any]) -> None:
        """Setting ``sd_model_checkpoint`` to the served model is accepted (nothing to do);
        another model is refused until model switching exists. Other keys are accepted
        and ignored, as A1111 does with the ones it does not know."""
        names.check_checkpoint("sd_model_checkpoint", body.get("sd_model_checkpoint"),
                               service.model_name)

    @api.post("/sdapi/v1/png-info", responses=error_responses(400, 401))
    async def png_info(body: A1111PngInfo) -> dict[str, Any]:
        try:
            text = read_image_text(_decode_image(body.image))
        except ValueError as exc:
            raise InvalidRequest([FieldError("image", f"must be a PNG or other image: {exc}")])\
                from None
        info = text.pop("parameters", "")
        if not info and "steadygen" in text:  # steadygen's JSON alone: rebuild A1111's text
            info = _parameters_from_steadygen(text["steadygen"])
        return {"info": info, "items": text,
                "parameters": parse_parameters(info) if info else {}}

    return api


def options(model: str, live_previews: bool) -> dict[str, Any]:
    """GET /sdapi/v1/options: the settings clients read, in A1111's names and types."""
    return {
        "sd_model_checkpoint": names.model_title(model),
        "sd_checkpoint_hash": names.model_hash(model),
        "sd_vae": "Automatic",
        "sd_checkpoints_limit": 1,
        "samples_format": "png",
        "samples_save": True,
        "save_images_add_number": True,
        "grid_save": False,
        "CLIP_stop_at_last_layers": 1,
        "eta_noise_seed_delta": 0,
        "live_previews_enable": live_previews,
        "live_previews_image_format": "jpeg",
        "show_progress_every_n_steps": 1,
        "show_progress_type": "Approx cheap",
        "live_preview_content": "Prompt",
        "sd_lora": "None",
    }


def _info(req: GenerationRequest, model: str, job: Any) -> dict[str, Any]:
    """A1111's ``info`` (a JSON string in the answer) for the finished job."""
    seeds = req.image_seeds
    return {
        "prompt": req.prompt,
        "all_prompts": [req.prompt] * req.n,
        "negative_prompt": req.negative_prompt,
        "all_negative_prompts": [req.negative_prompt] * req.n,
        "seed": req.seed,
        "all_seeds": seeds,
        "subseed": -1,
        "all_subseeds": [-1] * req.n,
        "subseed_strength": 0,
        "width": req.width,
        "height": req.height,
        "sampler_name": names.SAMPLER,
        "scheduler": names.SCHEDULER,
        "cfg_scale": req.guidance,
        "steps": req.steps,
        "batch_size": req.n,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": model,
        "sd_model_hash": names.model_hash(model)[:10],
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": None,
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": [a1111_parameters(req, model, seed) for seed in seeds],
        "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.created_at)),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
        "version": f"steadygen {__version__}",
        "steadygen_job": job.id,
        "timings": (job.result or {}).get("timings"),
    }


def _state(p: Any, job_count: int) -> dict[str, Any]:
    return {
        "skipped": False,
        "interrupted": False,
        "stopping_generation": False,
        "job": p.job_id if p else "",
        "job_count": job_count,
        "job_timestamp": "0",
        "job_no": 0,
        "sampling_step": p.step if p else 0,
        "sampling_steps": p.steps if p else 0,
    }


def _decode_image(text: str) -> bytes:
    """Base64, with or without a data: URL prefix (A1111 clients send both)."""
    payload = text.split(",", 1)[1] if text.startswith("data:") else text
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest([FieldError(
            "image", "must be a base64 image, optionally as a data: URL (got text that is "
                     "not base64)")]) from None


def _parameters_from_steadygen(text: str) -> str:
    try:
        meta = json.loads(text)
        req = GenerationRequest.from_dict(meta["parameters"])
        return a1111_parameters(req, meta.get("model", req.model), req.seed)
    except (ValueError, KeyError, TypeError):
        return ""
