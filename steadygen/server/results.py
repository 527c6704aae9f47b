"""Turning a finished job into the answer of a synchronous API (OpenAI, A1111)."""

from __future__ import annotations

import base64
from pathlib import Path

from fastapi import HTTPException

from steadygen.queue.job import Job, JobState


def require_success(job: Job) -> None:
    """A job that did not succeed becomes an HTTP error with its reason."""
    if job.state is JobState.SUCCEEDED:
        return
    if job.state is JobState.CANCELLED:
        raise HTTPException(409, f"job {job.id} was cancelled before it finished")
    raise HTTPException(500, f"job {job.id} failed: {job.error or 'unknown error'}")


def image_paths(images_dir: Path, job: Job) -> list[Path]:
    return [images_dir / rel for rel in (job.result or {}).get("images", [])]


def b64_images(images_dir: Path, job: Job) -> list[str]:
    return [base64.b64encode(p.read_bytes()).decode("ascii") for p in image_paths(images_dir, job)]
