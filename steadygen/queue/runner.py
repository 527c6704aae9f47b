"""Compose one job's run: telemetry window, engine, baselines, attribution, result record.

The job worker (queue/worker.py) calls ``run_job`` for every job, in both queue modes.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from steadygen.analysis.attribute import signals_of
from steadygen.analysis.baseline import Baselines, ShapeKey
from steadygen.engine.engine import Engine, GenerationResult, StepProgress
from steadygen.engine.preview import PreviewBudget
from steadygen.request import GenerationRequest

if TYPE_CHECKING:
    from steadygen.analysis.baseline import Expectation
    from steadygen.engine.timings import Timings
    from steadygen.telemetry.sampler import Sampler
    from steadygen.telemetry.window import TelemetryWindow

log = logging.getLogger("steadygen.worker")

Emit = Callable[[str, dict[str, Any]], None]


class Diagnoser(Protocol):
    """Attribution after a job (steadygen.analysis.attribute.make_diagnoser builds one)."""

    def __call__(
        self, *, job_id: str, key: ShapeKey, expectation: Expectation | None,
        timings: Timings, window: TelemetryWindow | None, engine: Engine, recompiles: int = 0,
    ) -> dict[str, Any] | None: ...


@dataclass
class RunContext:
    """What a job worker needs to run jobs: one per engine (``--concurrency`` gives each
    extra worker its own engine over the same weights); the rest is shared."""

    engine: Engine
    images_dir: Path
    baselines: Baselines
    sampler: Sampler | None = None  # None when telemetry is off
    diagnose: Diagnoser | None = None  # attribution, when present


def shape_key(engine: Engine, req: GenerationRequest) -> ShapeKey:
    opts = engine.options
    tag = ",".join(
        part
        for part in (
            f"attn={engine.applied.get('attention_backend', 'native')}",
            "compile" if opts.compile else "",
            "fp8" if opts.fp8 else "",
            "empty-cache" if opts.empty_cache_per_request else "",
            f"edit={req.variant}" if req.variant else "",  # mode, steps run, ControlNet, LoRAs
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
    tail_s = exp.tail_s if exp is not None else None

    budget = PreviewBudget()  # live previews, when asked for, within 2 % of the step time

    def on_step(p: StepProgress) -> None:
        data = {
            "step": p.step,
            "steps": p.total,
            "step_s": round(p.step_s, 6),
            "elapsed_s": round(p.elapsed_s, 6),
            "eta_s": round(p.remaining_s(tail_s), 3),
        }
        if req.preview and p.latents is not None:
            jpeg = budget.maybe(p.step_s, lambda: engine.preview(p.latents))
            if jpeg is not None:
                data["preview"] = base64.b64encode(jpeg).decode("ascii")
        emit("step", data)

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
    return {
        "images": [str(p.relative_to(ctx.images_dir)) for p in result.paths],
        "seed": result.request.seed,
        "timings": result.timings.public(),
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
