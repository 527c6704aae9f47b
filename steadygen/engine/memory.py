"""Memory modes: how much of the pipeline stays on the GPU between jobs.

    high      everything resident on the device (fastest; bf16 needs about 20.5 GB)
    balanced  the text encoder (8 GB in bf16) leaves the device after encoding and comes back
              only on a prompt-cache miss; the VAE decodes in tiles
    low       balanced, plus each model is on the device only for its own stage (model
              offload) and the transformer's weights are stored in float8 and computed in
              bf16 (diffusers' layerwise casting) where torch has float8
    auto      picks one of the three from the device's memory (``recommend``)

Moving weights is timed: ``Offloader.stage`` books the seconds into ``Timings.offload_s``
and takes them out of the phase they happened in, so attribution can name "offload".
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from steadygen.errors import ConfigError

MODES = ("auto", "high", "balanced", "low")
GIB = 2**30
# high: bf16 resident (20.5 GB) plus 1024x1024 activations and an untiled VAE decode's peak,
# too tight on a 24 GB card. balanced: while encoding both the text encoder (8 GB) and the
# transformer (12.3 GB) are on the device, then the transformer and a tiled decode: a 24 GB
# card. low: one model at a time (the text encoder's 8 GB is the largest), 12-16 GB cards.
HIGH_MIN_BYTES = 30 * GIB
BALANCED_MIN_BYTES = 20 * GIB


@dataclass(frozen=True)
class MemoryPlan:
    mode: str  # high | balanced | low (resolved; never auto)
    reason: str
    offload_text_encoder: bool = False  # off the device after encoding
    offload_models: bool = False  # every model on the device for its own stage only
    tile_vae: bool = False
    fp8_storage: bool = False  # transformer weights stored in float8_e4m3fn

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def recommend(total_bytes: int | None) -> tuple[str, str]:
    """(mode, why) for a device with ``total_bytes`` of memory (None: no GPU)."""
    if total_bytes is None:
        return "high", "no GPU: weights stay where they are"
    gib = total_bytes / GIB
    if total_bytes >= HIGH_MIN_BYTES:
        return "high", f"{gib:.0f} GiB holds every model in bf16 (about 20.5 GB) with room"
    if total_bytes >= BALANCED_MIN_BYTES:
        return "balanced", (f"{gib:.0f} GiB: the text encoder leaves the GPU after encoding, "
                            "the VAE decodes in tiles")
    return "low", (f"{gib:.0f} GiB: one model on the GPU at a time, transformer weights in "
                   "float8")


def plan(mode: str, total_bytes: int | None) -> MemoryPlan:
    """The plan for ``mode`` on a device with ``total_bytes`` (None on a CPU)."""
    if mode not in MODES:
        raise ConfigError(f"memory must be one of {', '.join(MODES)} (got {mode!r})")
    reason = f"{mode} as asked"
    if mode == "auto":
        mode, why = recommend(total_bytes)
        reason = f"auto: {why}"
    if mode == "high":
        return MemoryPlan("high", reason)
    if mode == "balanced":
        return MemoryPlan("balanced", reason, offload_text_encoder=True, tile_vae=True)
    return MemoryPlan("low", reason, offload_text_encoder=True, offload_models=True,
                      tile_vae=True, fp8_storage=True)


def device_total_bytes(device: str) -> int | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return int(torch.cuda.get_device_properties(torch.device(device)).total_memory)


class Offloader:
    """Where each model lives, and the timed moves between the device and host memory."""

    HOME = {"text_encoder": "encode", "transformer": "denoise", "vae": "decode"}

    def __init__(self, memory_plan: MemoryPlan, device: str, sync: Any = None):
        self.plan = memory_plan
        self.device = device
        self.offload_device = "cpu"
        self._sync = sync or (lambda: None)
        self.where: dict[str, str] = {}

    def place(self, pipe: Any, fp8_compute: bool = False) -> dict[str, Any]:
        """Put a freshly loaded pipeline where the plan says; returns what was applied."""
        applied: dict[str, Any] = {"memory": self.plan.mode, "memory_reason": self.plan.reason}
        for name in self.HOME:
            resident = not self.plan.offload_models
            target = self.device if resident else self.offload_device
            getattr(pipe, name).to(target)
            self.where[name] = target
        if self.plan.tile_vae:
            pipe.vae.enable_tiling()
        if self.plan.fp8_storage:
            applied["fp8_storage"] = enable_fp8_storage(pipe.transformer, skip=fp8_compute)
        return applied

    def _move(self, pipe: Any, name: str, target: str) -> float:
        if self.where.get(name) == target:
            return 0.0
        t0 = time.monotonic()
        getattr(pipe, name).to(target)
        self._sync()
        self.where[name] = target
        return time.monotonic() - t0

    @contextmanager
    def stage(self, pipe: Any, name: str, timings: Any, phase_in: str | None,
              phase_out: str | None) -> Iterator[None]:
        """``name`` on the device for the body; afterwards off it if the plan says so. The
        seconds moving are added to ``timings.offload_s``; those inside a phase's interval
        also to ``offload_phases[phase]`` (the engine takes them out of that phase)."""
        _book(timings, phase_in, self._move(pipe, name, self.device))
        try:
            yield
        finally:
            leave = self.plan.offload_models or (
                name == "text_encoder" and self.plan.offload_text_encoder
            )
            if leave:
                _book(timings, phase_out, self._move(pipe, name, self.offload_device))

    def vae_tiling(self, asked: str) -> str:
        """The VAE tiling mode to use: the plan's tiling turns ``auto`` into ``on``."""
        return "on" if self.plan.tile_vae and asked == "auto" else asked


def _book(timings: Any, phase: str | None, seconds: float) -> None:
    if not seconds:
        return
    timings.offload_s += seconds
    if phase is not None:
        timings.offload_phases[phase] = timings.offload_phases.get(phase, 0.0) + seconds


def check_combination(memory_plan: MemoryPlan, fp8: bool) -> str | None:
    """Why these settings cannot go together (None when they can)."""
    if memory_plan.offload_models and fp8:
        return ("memory low moves the transformer between the GPU and host memory, which "
                "torchao FP8 weights do not support; use --memory balanced with --fp8 (low "
                "already stores the weights in float8)")
    return None


def enable_fp8_storage(transformer: Any, skip: bool = False) -> str:
    """Store the transformer's weights in float8 e4m3 and compute in its own dtype."""
    import torch

    if skip:
        return "not applied: the transformer already computes in FP8 (--fp8)"
    if not hasattr(torch, "float8_e4m3fn"):
        return "not applied: this torch has no float8 dtype"
    compute = next(transformer.parameters()).dtype
    transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn,
                                         compute_dtype=compute)
    return f"transformer weights stored in float8_e4m3fn, computed in {compute}"
