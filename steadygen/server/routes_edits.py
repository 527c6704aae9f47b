"""Editing over HTTP: OpenAI's ``POST /v1/images/edits`` (multipart, mask by transparency),
AUTOMATIC1111's ``POST /sdapi/v1/img2img`` (base64, mask white = redo) and ``GET
/sdapi/v1/loras``, and the native ``POST /v1/inputs`` (upload once, refer by id) and
``GET /v1/loras``.

Input images are checked and stored (steadygen.inputs) *before* a job is submitted, so an
accepted job is durable with its images in both queues. Each input image is one job; the
answer lists their images in order.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse
from starlette.datastructures import UploadFile

from steadygen.config import Limits
from steadygen.editing import DEFAULT_STRENGTH, available_loras, lora_fields
from steadygen.engine.outputs import SAMPLER_NAME
from steadygen.errors import FieldError, InvalidRequest
from steadygen.inputs import REF_RE, decode_base64, store_image, store_mask
from steadygen.request import GenerationRequest, parse_size
from steadygen.server.results import b64_images, require_success
from steadygen.server.schemas import A1111Img2Img, error_responses, stream_response
from steadygen.server.service import Service

MAX_PART_BYTES = 256 * 1024 * 1024  # the body limit (security.BodyLimit) is the real bound
A1111_FILLS = {0: "fill", 1: "original"}
A1111_RESIZE = {0: "resize", 1: "crop", 2: "fill"}
EDIT_ERRORS = error_responses(400, 401, 409, 413, 429, 500, 503, 507)


def _multipart(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads its multipart form itself."""
    schema = {"type": "object", "properties": properties, "required": required}
    return {"requestBody": {"required": True,
                            "content": {"multipart/form-data": {"schema": schema}}}}


_FILE = {"type": "string", "format": "binary"}
EDITS_FORM = _multipart({
    "image": {"oneOf": [_FILE, {"type": "array", "items": _FILE}],
              "description": "One or more images (PNG, JPEG, WebP); one job each."},
    "mask": {**_FILE, "description": "PNG with alpha, the first image's size; "
                                     "transparent = redo."},
    "prompt": {"type": "string"}, "n": {"type": "integer"},
    "size": {"type": "string", "description": "WIDTHxHEIGHT or auto (the image's)"},
    "response_format": {"type": "string", "enum": ["b64_json", "url"]},
    "model": {"type": "string"}, "steps": {"type": "integer"}, "seed": {"type": "integer"},
    "guidance": {"type": "number"}, "strength": {"type": "number"},
    "negative_prompt": {"type": "string"},
}, ["image", "prompt"])
INPUTS_FORM = _multipart({"file": _FILE}, ["file"])


def _bad(field: str, message: str) -> InvalidRequest:
    return InvalidRequest([FieldError(field, message)])


def _inputs_dir(limits: Limits) -> Path:
    if limits.inputs_dir is None:
        raise _bad("image", "this server has no data directory for input images")
    return Path(limits.inputs_dir)


def store_json_inputs(raw: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """Native JSON: each of init_image, mask, control_image is an input id (from POST
    /v1/inputs) or a base64 image (stored here). Returns raw with ids only."""
    out = dict(raw)
    size = None
    for name in ("init_image", "control_image", "mask"):
        value = out.get(name)
        if value is None or (isinstance(value, str) and REF_RE.match(value)):
            continue
        data = decode_base64(value, name)
        if name == "mask":
            stored = store_mask(data, name, limits, _inputs_dir(limits), size)
        else:
            stored = store_image(data, name, limits, _inputs_dir(limits))
            size = (stored.width, stored.height) if name == "init_image" else size
        out[name] = stored.ref
    return out


async def _run_jobs(service: Service, reqs: list[GenerationRequest]) -> list[Any]:
    """Submit every request first (all accepted or none waited on), then wait for each."""
    jobs = [await asyncio.to_thread(service.queue.submit, req) for req in reqs]
    done = []
    for job in jobs:
        finished = await service.queue.wait(job.id)
        require_success(finished)
        done.append(finished)
    return done


def _size_from(raw: dict[str, Any], width: int, height: int) -> None:
    """Without an explicit size, the output takes the input's, rounded down to 16."""
    raw.setdefault("width", max(16, width - width % 16))
    raw.setdefault("height", max(16, height - height % 16))


def router(service: Service) -> APIRouter:
    api = APIRouter(tags=["editing"])
    limits = service.limits

    @api.post("/v1/inputs", status_code=201, openapi_extra=INPUTS_FORM,
              responses=error_responses(400, 401, 413, 507))
    async def upload_input(
        request: Request,
        kind: str = Query("image", description="image, or mask (white = redo)"),
    ) -> dict[str, Any]:
        """Store an image once (multipart field ``file``); refer to it by ``id`` in jobs."""
        if kind not in ("image", "mask"):
            raise _bad("kind", f"must be image or mask (got {kind!r})")
        form = await request.form(max_part_size=MAX_PART_BYTES)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise _bad("file", "is required: a multipart file field named 'file'")
        data = await upload.read()
        store = store_mask if kind == "mask" else store_image
        args = (None,) if kind == "mask" else ()
        stored = await asyncio.to_thread(store, data, "file", limits, _inputs_dir(limits), *args)
        return stored.to_dict()

    @api.get("/v1/inputs/{ref}.png", response_class=FileResponse, responses={
        **stream_response("image/png", "A stored input image (normalised PNG)."),
        **error_responses(401, 404)})
    async def input_image(ref: str) -> FileResponse:
        path = _inputs_dir(limits) / f"{ref}.png"
        if not REF_RE.match(ref) or not path.is_file():
            raise HTTPException(404, f"ref: no stored input {ref}")
        return FileResponse(path, media_type="image/png")

    @api.get("/v1/loras", responses=error_responses(401))
    async def loras() -> dict[str, Any]:
        names = await asyncio.to_thread(available_loras, limits.lora_dir)
        return {"loras": [{"name": n} for n in names],
                "weight_range": [limits.min_lora_weight, limits.max_lora_weight],
                "max_loras": limits.max_loras, "controlnet": limits.controlnet_enabled,
                "max_input_images": limits.max_input_images}

    @api.get("/sdapi/v1/loras", tags=["automatic1111"], responses=error_responses(401))
    async def a1111_loras() -> list[dict[str, Any]]:
        names = await asyncio.to_thread(available_loras, limits.lora_dir)
        root = limits.lora_dir
        return [{"name": n, "alias": n, "path": f"{root}/{n}.safetensors" if root else "",
                 "metadata": {}} for n in names]

    @api.post("/v1/images/edits", tags=["openai"], openapi_extra=EDITS_FORM,
              responses=EDIT_ERRORS)
    async def openai_edits(request: Request) -> dict[str, Any]:
        form = await request.form(max_part_size=MAX_PART_BYTES)
        raw, images, mask = _openai_fields(form, limits)
        fmt = raw.pop("response_format")
        stored = [await asyncio.to_thread(store_image, await f.read(), field, limits,
                                          _inputs_dir(limits)) for field, f in images]
        first = stored[0]
        if mask is not None:
            data = await mask.read()
            raw["mask"] = (await asyncio.to_thread(
                store_mask, data, "mask", limits, _inputs_dir(limits),
                (first.width, first.height), True)).ref
        _size_from(raw, first.width, first.height)
        reqs = []
        for k, item in enumerate(stored):
            one = {**raw, "init_image": item.ref}
            if k > 0:  # OpenAI: the mask applies to the first image
                one.pop("mask", None)
            one.setdefault("strength", 1.0 if "mask" in one else DEFAULT_STRENGTH["img2img"])
            reqs.append(service.validate(one))
        jobs = await _run_jobs(service, reqs)
        data: list[dict[str, Any]] = []
        base = str(request.base_url).rstrip("/")
        for req, job in zip(reqs, jobs, strict=True):
            if fmt == "url":
                n = len((job.result or {}).get("images", []))
                data += [{"url": f"{base}/v1/jobs/{job.id}/images/{i}.png"} for i in range(n)]
            else:
                encoded = await asyncio.to_thread(b64_images, service.images_dir, job)
                data += [{"b64_json": b, "revised_prompt": req.prompt} for b in encoded]
        return {"created": int(jobs[0].created_at or time.time()), "data": data}

    @api.post("/sdapi/v1/img2img", tags=["automatic1111"], responses=EDIT_ERRORS)
    async def img2img(body: A1111Img2Img) -> dict[str, Any]:
        raw = _a1111_fields(body)
        if not body.init_images:
            raise _bad("init_images", "must hold at least one base64 image")
        if len(body.init_images) > limits.max_input_images:
            raise _bad("init_images", f"must hold at most {limits.max_input_images} images "
                                      f"(got {len(body.init_images)})")
        stored = []
        for k, text in enumerate(body.init_images):
            field = f"init_images[{k}]"
            stored.append(await asyncio.to_thread(
                store_image, decode_base64(text, field), field, limits, _inputs_dir(limits)))
        if body.mask:
            raw["mask"] = (await asyncio.to_thread(
                store_mask, decode_base64(body.mask, "mask"), "mask", limits,
                _inputs_dir(limits), (stored[0].width, stored[0].height))).ref
        reqs = [service.validate({**raw, "init_image": s.ref}) for s in stored]
        jobs = await _run_jobs(service, reqs)
        images: list[str] = []
        for job in jobs:
            images += await asyncio.to_thread(b64_images, service.images_dir, job)
        req = reqs[0]
        info = {
            "prompt": req.prompt, "negative_prompt": req.negative_prompt,
            "all_prompts": [req.prompt] * len(images), "seed": req.seed,
            "all_seeds": [s for r in reqs for s in r.image_seeds], "width": req.width,
            "height": req.height, "steps": req.steps, "cfg_scale": req.guidance,
            "denoising_strength": req.strength, "sampler_name": SAMPLER_NAME,
            "sd_model_name": req.model, "batch_size": req.n,
            "loras": [{"name": s.name, "weight": s.weight} for s in req.loras],
            "steadygen_jobs": [j.id for j in jobs],
            "timings": (jobs[0].result or {}).get("timings"),
        }
        params = body.model_dump(exclude={"init_images", "mask"})
        return {"images": images, "parameters": params, "info": json.dumps(info)}

    return api


def _openai_fields(form: Any, limits: Limits) -> tuple[dict[str, Any], list[Any], Any]:
    """The multipart form of /v1/images/edits: (raw request fields, image files, mask)."""
    images = [("image", f) for f in form.getlist("image")] + [
        ("image[]", f) for f in form.getlist("image[]")]
    if not images:
        raise _bad("image", "is required: one or more image files (PNG, JPEG or WebP)")
    if any(not isinstance(f, UploadFile) for _, f in images):
        raise _bad("image", "must be a file upload, not a text field")
    if len(images) > limits.max_input_images:
        raise _bad("image", f"must hold at most {limits.max_input_images} images "
                            f"(got {len(images)})")
    mask = form.get("mask")
    if mask is not None and not isinstance(mask, UploadFile):
        raise _bad("mask", "must be a PNG file upload with an alpha channel")
    text = {k: v for k, v in form.multi_items() if isinstance(v, str)}
    prompt = text.get("prompt")
    if prompt is None:
        raise _bad("prompt", "is required")
    raw: dict[str, Any] = {"prompt": prompt, **lora_fields(prompt)}
    for name, kind in (("n", int), ("steps", int), ("seed", int), ("guidance", float),
                       ("strength", float)):
        if name in text:
            try:
                raw[name] = kind(text[name])
            except ValueError:
                raise _bad(name, f"must be a {kind.__name__} (got {text[name]!r})") from None
    if text.get("negative_prompt"):
        raw["negative_prompt"] = text["negative_prompt"]
    if text.get("model"):
        raw["model"] = text["model"]
    size = text.get("size")
    if size and size != "auto":
        raw["width"], raw["height"] = parse_size(size)
    fmt = text.get("response_format", "b64_json")
    if fmt not in ("b64_json", "url"):
        raise _bad("response_format", f"must be b64_json or url (got {fmt!r})")
    raw["response_format"] = fmt
    return raw, images, mask


def _a1111_fields(body: A1111Img2Img) -> dict[str, Any]:
    """A1111's img2img options in steadygen's terms (never silently changed)."""
    if body.inpainting_fill not in A1111_FILLS:
        raise _bad("inpainting_fill", "must be 0 (fill) or 1 (original); 2 and 3 (latent "
                                      f"noise, latent nothing) are not supported (got "
                                      f"{body.inpainting_fill})")
    if body.resize_mode not in A1111_RESIZE:
        raise _bad("resize_mode", "must be 0 (just resize), 1 (crop and resize) or 2 (resize "
                                  f"and fill); 3 is not supported (got {body.resize_mode})")
    if body.inpainting_mask_invert not in (0, 1):
        raise _bad("inpainting_mask_invert", f"must be 0 or 1 (got {body.inpainting_mask_invert})")
    raw: dict[str, Any] = {
        "prompt": body.prompt, "negative_prompt": body.negative_prompt, "width": body.width,
        "height": body.height, "steps": body.steps, "guidance": body.cfg_scale,
        "seed": None if body.seed == -1 else body.seed, "n": body.batch_size * body.n_iter,
        "strength": body.denoising_strength, "resize_mode": A1111_RESIZE[body.resize_mode],
        **lora_fields(body.prompt),
    }
    if body.mask:
        raw.update({
            "mask_blur": body.mask_blur, "inpaint_fill": A1111_FILLS[body.inpainting_fill],
            "inpaint_full_res": bool(body.inpaint_full_res),
            "inpaint_full_res_padding": body.inpaint_full_res_padding,
            "mask_invert": bool(body.inpainting_mask_invert),
        })
    return raw
