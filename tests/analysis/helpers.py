"""A real steadygen server stack in this process (bench's InProcessTarget: queue, worker,
engine, sampler, baselines, attribution; no HTTP) on the tiny model, and small readers of
its job records."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from steadygen.bench.runner import InProcessTarget
from steadygen.config import load_settings

PROMPT = "a lighthouse at dusk"


@contextmanager
def tiny_server(data_dir: Path, cache_dir: Path, **overrides: Any) -> Iterator[InProcessTarget]:
    """A started, warm in-process server; stopped on exit."""
    settings = load_settings(data_dir=data_dir, cache_dir=cache_dir, model="zimage-tiny",
                             device="cpu", **overrides)
    target = InProcessTarget(settings)
    try:
        yield target
    finally:
        target.close()


def run_job(
    target: InProcessTarget, size: int = 256, steps: int = 8, seed: int = 1
) -> dict[str, Any]:
    """One job through the queue; its public record (timings, telemetry, diagnosis)."""
    job = target.run_one({"prompt": PROMPT, "width": size, "height": size, "steps": steps,
                          "seed": seed})
    assert job["state"] == "succeeded", job.get("error")
    assert job["diagnosis"] is not None, "every job carries a diagnosis"
    return job


def cause(job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in job["diagnosis"]["causes"] if c["kind"] == kind), None)


def cause_kinds(job: dict[str, Any]) -> set[str]:
    return {c["kind"] for c in job["diagnosis"]["causes"]}
