"""The AUTOMATIC1111 lists that clients fetch when they connect, in A1111's shapes:
samplers, schedulers, checkpoints, VAEs, upscalers, embeddings, scripts, memory, command
flags, and ``/internal/ping``. Each says what steadygen has, no more: one sampler, one
model, no separate VAEs or upscalers (an empty list is A1111's answer for "none")."""

from __future__ import annotations

import asyncio
from typing import Any

import psutil
from fastapi import APIRouter

from steadygen.server import a1111_names as names
from steadygen.server.schemas import error_responses
from steadygen.server.service import Service


def router(service: Service) -> APIRouter:
    api = APIRouter(tags=["automatic1111"], responses=error_responses(401))

    @api.get("/internal/ping")
    async def ping() -> dict[str, Any]:
        return {}

    @api.get("/sdapi/v1/samplers")
    async def samplers() -> list[dict[str, Any]]:
        return names.samplers()

    @api.get("/sdapi/v1/schedulers")
    async def schedulers() -> list[dict[str, Any]]:
        return names.schedulers()

    @api.get("/sdapi/v1/sd-models")
    async def sd_models() -> list[dict[str, Any]]:
        return [names.sd_model(service.model_name)]

    @api.get("/sdapi/v1/sd-vae")
    async def sd_vae() -> list[dict[str, Any]]:
        return []  # the VAE is part of the model; there are none to choose from

    @api.get("/sdapi/v1/upscalers")
    async def upscalers() -> list[dict[str, Any]]:
        return [{"name": "None", "model_name": None, "model_path": None, "model_url": None,
                 "scale": 1.0}]

    @api.get("/sdapi/v1/latent-upscale-modes")
    async def latent_upscale_modes() -> list[dict[str, Any]]:
        return []

    @api.get("/sdapi/v1/embeddings")
    async def embeddings() -> dict[str, Any]:
        return {"loaded": {}, "skipped": {}}

    @api.get("/sdapi/v1/scripts")
    async def scripts() -> dict[str, list[str]]:
        return {"txt2img": [], "img2img": []}

    @api.get("/sdapi/v1/cmd-flags")
    async def cmd_flags() -> dict[str, Any]:
        return {"api": True, "nowebui": False, "ckpt": service.model_name,
                "device_id": service.device}

    @api.get("/sdapi/v1/memory")
    async def memory() -> dict[str, Any]:
        return await asyncio.to_thread(_memory, service)

    return api


def _memory(service: Service) -> dict[str, Any]:
    """A1111's MemoryResponse: host RAM, and the GPU's memory from the telemetry sampler
    (A1111 reads torch's allocator; steadygen's API process has no torch of its own, so
    ``cuda.system`` is the device's memory as NVML reports it)."""
    vm = psutil.virtual_memory()
    ram = {"free": vm.available, "used": vm.total - vm.available, "total": vm.total}
    sample = service.sampler.latest() if service.sampler is not None else None
    gpus = getattr(sample, "gpus", None) or []
    gpu = gpus[0] if gpus else None
    if gpu is None or gpu.mem_total_bytes is None or gpu.mem_used_bytes is None:
        return {"ram": ram, "cuda": {"error": f"no GPU memory reading on {service.device}"}}
    total, used = gpu.mem_total_bytes, gpu.mem_used_bytes
    return {"ram": ram, "cuda": {"system": {"free": total - used, "used": used,
                                            "total": total}}}
