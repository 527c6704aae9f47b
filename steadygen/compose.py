"""Build the capabilities from the one settings object: the engine, the telemetry sampler,
the attribution function, and what a job worker runs jobs with. ``generate``, ``serve``
and ``worker`` compose the same way."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from steadygen.config import Settings
from steadygen.request import parse_size

if TYPE_CHECKING:
    from steadygen.analysis.baseline import Baselines
    from steadygen.engine.engine import Engine
    from steadygen.queue.contract import JobQueue
    from steadygen.queue.runner import Diagnoser, RunContext
    from steadygen.telemetry.sampler import Sampler

log = logging.getLogger("steadygen.attribution")


def build_engine(settings: Settings) -> Engine:
    from steadygen.engine.engine import Engine
    from steadygen.engine.modes import EditConfig
    from steadygen.engine.speed import EngineOptions

    options = EngineOptions(
        attention=settings.attention,
        compile=settings.compile,
        fp8=settings.fp8,
        vae_tiling=settings.vae_tiling,
        prompt_cache_size=settings.prompt_cache_size,
        empty_cache_per_request=settings.empty_cache_per_request,
        memory=settings.memory,
        cuda_graphs=settings.cuda_graphs,
        exact_length_prompts=settings.exact_length_prompts,
        vae_decode=settings.vae_decode,
    )
    engine = Engine.create(
        model=settings.model,
        device=settings.device,
        cache_dir=settings.cache_dir,
        options=options,
        concurrency=settings.concurrency,
    )
    engine.configure_edits(EditConfig(
        inputs_dir=settings.inputs_dir, lora_dir=settings.lora_dir,
        controlnet=settings.controlnet, lora_cache_size=settings.lora_cache_size,
    ))
    return engine


def gpu_index(device: str) -> int:
    """'cuda:1' -> 1; 0 for 'cuda' and for the CPU."""
    return int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0


def build_sampler(
    settings: Settings, device: str, own_gpu_bytes: Callable[[int], int | None] | None = None
) -> Sampler:
    """A sampler for ``device`` (its GPU only, when it is one) with the alert thresholds;
    not started. ``sampler_hz`` 0 gives one that only reads counters at job edges.
    ``own_gpu_bytes`` (GPU index -> our allocator's reserved bytes) lets telemetry find our
    own GPU process where NVML's pids are the host's (a container); on CUDA it defaults to
    the engine's allocator statistics."""
    from steadygen.telemetry.alerts import Alerts, AlertThresholds
    from steadygen.telemetry.sampler import Sampler

    alerts = Alerts(
        AlertThresholds(temp_c=settings.temp_alert_c, fragmentation=settings.fragmentation_alert)
    )
    interval = 1.0 / settings.sampler_hz if settings.sampler_hz > 0 else 0.0
    return Sampler(
        interval_s=interval,
        gpu_indices=[gpu_index(device)] if device.startswith("cuda") else None,
        alerts=alerts,
        enable_gpu=True,
        own_gpu_bytes=own_gpu_bytes or (_reserved_bytes if device.startswith("cuda") else None),
    )


def _reserved_bytes(index: int) -> int | None:
    """Our allocator's reserved bytes on GPU ``index`` (0 before CUDA is initialised)."""
    from steadygen.engine.device import memory_stats

    return int(memory_stats(f"cuda:{index}").get("reserved_bytes", 0))


def build_diagnoser(settings: Settings, sampler: Sampler | None = None) -> Diagnoser:
    """Attribution after each job; slow jobs get one warning line each."""
    from steadygen.analysis.attribute import make_diagnoser

    return make_diagnoser(settings.slow_margin, sampler=sampler, on_slow=log.warning)


def warmup_sizes(settings: Settings, engine: Engine) -> list[tuple[int, int]]:
    if not settings.warmup_sizes:
        return [(engine.spec.default_side, engine.spec.default_side)]
    return [parse_size(s, field="warmup_sizes") for s in settings.warmup_sizes]


def rebuild_baselines(queue: JobQueue, engine: Engine, limit: int = 1000) -> Baselines:
    """Baselines persist with the jobs: replay the recent history into them."""
    from steadygen.analysis.baseline import Baselines
    from steadygen.queue.runner import shape_key

    baselines = Baselines()
    for job in queue.recent_succeeded(limit):
        result = job.result or {}
        shape, timings = result.get("shape"), result.get("timings")
        if shape and timings:
            key = shape_key(engine, job.request)
            if key.to_dict() == shape:
                baselines.add(key, timings, result.get("signals"))
    return baselines


def build_context(settings: Settings, engine: Engine, baselines: Baselines,
                  sampler: Sampler | None, diagnose: Diagnoser | None) -> RunContext:
    from steadygen.queue.runner import RunContext

    return RunContext(engine=engine, images_dir=settings.images_dir, baselines=baselines,
                      sampler=sampler, diagnose=diagnose)
