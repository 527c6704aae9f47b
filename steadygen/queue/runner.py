"""Compose one job's run: telemetry window, engine, baselines, attribution, result record.

Both the in-process worker and the Redis worker call ``run_job``; they differ only in how
jobs arrive and where events go.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steadygen.analysis.attribute import signals_of
from steadygen.analysis.baseline import Baselines, Expectation, ShapeKey
from steadygen.engine.engine import Engine, GenerationResult, StepProgress
from steadygen.request import GenerationRequest

log = logging.getLogger("steadygen.worker")

Emit = Callable[[str, dict[str, Any]], None]


@dataclass
class RunContext:
    """What a worker needs to run jobs; shared by all workers of one process."""

    engine: Engine
    images_dir: Path
    baselines: Baselines
    sampler: Any = None  # steadygen.telemetry.sampler.Sampler, or None when off
    diagnose: Callable[..., dict[str, Any] | None] | None = None  # attribution, when present
    extra: dict[str, Any] = field(default_factory=dict)


def shape_key(engine: Engine, req: GenerationRequest) -> ShapeKey:
    opts = engine.options
    tag = ",".join(
        part
        for part in (
            f"attn={engine.applied.get('attention_backend', 'native')}",
            "compile" if opts.compile else "",
            "fp8" if opts.fp8 else "",
            "empty-cache" if opts.empty_cache_per_request else "",
        )
        if part
    )
    return ShapeKey(
        model=engine.model_name,
        width=req.width,
        height=req.height,
        steps=req.steps,
        cfg=req.uses_cfg,
        n=req.n,
        device=engine.device,
        options=tag,
    )


def expected_service_s(engine: Engine, baselines: Baselines, req: GenerationRequest) -> float:
    """Expected service time of a request, for ETAs (a rough default when nothing is known)."""
    exp = baselines.expected(shape_key(engine, req))
    if exp is not None:
        return exp.total_s
    step = engine.step_estimate(req)
    if step is not None:
        return step * req.steps * 1.3
    return 0.05 * req.steps * req.n * (req.width * req.height) / (256 * 256)


def step_eta_s(p: StepProgress, steps_done_s: float, exp: Expectation | None) -> float:
    """Remaining seconds after step p: this job's own mean step for the steps left, plus
    the expected decode and save."""
    own_step = steps_done_s / p.step if p.step else 0.0
    tail = exp.tail_s if exp is not None else own_step
    return max(0.0, (p.total - p.step) * own_step + tail)


def run_job(
    ctx: RunContext,
    job_id: str,
    req: GenerationRequest,
    emit: Emit,
    cancel: threading.Event,
    queue_wait_s: float,
) -> dict[str, Any]:
    """Run one job to its result record. Raises the engine's typed errors on failure."""
    engine = ctx.engine
    key = shape_key(engine, req)
    exp = ctx.baselines.expected(key)
    mark = ctx.sampler.begin_job(job_id) if ctx.sampler is not None else None
    steps_done = [0.0]

    def on_step(p: StepProgress) -> None:
        steps_done[0] += p.step_s
        emit(
            "step",
            {
                "step": p.step,
                "steps": p.total,
                "step_s": round(p.step_s, 6),
                "elapsed_s": round(p.elapsed_s, 6),
                "eta_s": round(step_eta_s(p, steps_done[0], exp), 3),
            },
        )

    window = None
    try:
        result = engine.generate(
            req, on_step=on_step, cancel=cancel, save_dir=ctx.images_dir / job_id
        )
    finally:
        if mark is not None:
            window = ctx.sampler.end_job(mark)
    result.timings.queue_wait_s = queue_wait_s
    record = result_record(ctx, result, key)
    if window is not None:
        record["telemetry"] = window.summary()
    if ctx.diagnose is not None:
        record["diagnosis"] = ctx.diagnose(
            job_id=job_id, key=key, expectation=exp, timings=result.timings, window=window,
            engine=engine, recompiles=int(result.metadata.get("recompiles", 0)),
        )
    alerts = getattr(ctx.sampler, "alerts", None)
    fragmentation = result.memory.get("fragmentation_ratio")
    if alerts is not None and fragmentation is not None:
        alerts.observe_fragmentation(fragmentation)
    signals = signals_of(window, _gpu_index(engine.device))
    record["signals"] = signals
    ctx.baselines.add(key, record["timings"], signals)
    return record


def _gpu_index(device: str) -> int:
    return int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0


def result_record(ctx: RunContext, result: GenerationResult, key: ShapeKey) -> dict[str, Any]:
    t = result.timings.to_dict()
    t.pop("marks", None)
    t.pop("step_ends", None)
    return {
        "images": [str(p.relative_to(ctx.images_dir)) for p in result.paths],
        "seed": result.request.seed,
        "timings": t,
        "notes": result.notes,
        "memory": result.memory,
        "device": result.device,
        "model": result.model,
        "shape": key.to_dict(),
        "versions": result.metadata.get("versions", {}),
    }


def brief_result(job_id: str, record: dict[str, Any]) -> dict[str, Any]:
    """What the final SSE event carries: enough to show the result without another call."""
    return {
        "images": [f"/v1/jobs/{job_id}/images/{k}.png" for k in range(len(record["images"]))],
        "seed": record["seed"],
        "timings": record["timings"],
        "notes": record["notes"],
        "diagnosis": record.get("diagnosis"),
    }
