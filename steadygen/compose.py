"""Build the capabilities from the one settings object: the engine, the telemetry sampler
and the attribution function. ``generate``, ``serve`` and ``worker`` compose the same way."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from steadygen.config import Settings

log = logging.getLogger("steadygen.attribution")


def build_engine(settings: Settings) -> Any:
    from steadygen.engine.engine import Engine
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
    return Engine.create(
        model=settings.model,
        device=settings.device,
        cache_dir=settings.cache_dir,
        options=options,
        concurrency=settings.concurrency,
    )


def build_sampler(settings: Settings, device: str) -> Any:
    """A sampler for ``device`` (its GPU only, when it is one) with the alert thresholds;
    not started. ``sampler_hz`` 0 gives one that only reads counters at job edges."""
    from steadygen.telemetry.alerts import Alerts, AlertThresholds
    from steadygen.telemetry.sampler import Sampler

    alerts = Alerts(
        AlertThresholds(temp_c=settings.temp_alert_c, fragmentation=settings.fragmentation_alert)
    )
    index = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
    interval = 1.0 / settings.sampler_hz if settings.sampler_hz > 0 else 0.0
    return Sampler(
        interval_s=interval,
        gpu_indices=[index] if device.startswith("cuda") else None,
        alerts=alerts,
        enable_gpu=True,
    )


def build_diagnoser(settings: Settings, sampler: Any = None) -> Callable[..., Any]:
    """Attribution after each job; slow jobs get one warning line each."""
    from steadygen.analysis.attribute import make_diagnoser

    return make_diagnoser(settings.slow_margin, sampler=sampler, on_slow=log.warning)
