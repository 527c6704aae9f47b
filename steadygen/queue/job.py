"""Job, its states, and the events a job emits (what SSE clients see)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from steadygen.request import GenerationRequest


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


TERMINAL = frozenset(s for s in JobState if s.terminal)


def new_job_id() -> str:
    """Sortable by creation time (ms), then random: 'j' + 11 hex time + 8 hex random."""
    return f"j{int(time.time() * 1000):011x}{secrets.token_hex(4)}"


@dataclass
class Job:
    id: str
    request: GenerationRequest
    state: JobState = JobState.QUEUED
    priority: int = 0
    created_at: float = field(default_factory=time.time)  # wall clock, seconds
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    error: str | None = None
    cancel_requested: bool = False
    worker: str | None = None
    result: dict[str, Any] | None = None  # images, timings, notes, telemetry, diagnosis
    seq: int = 0  # arrival order, from the store

    def to_public(self) -> dict[str, Any]:
        """The job as the HTTP API shows it."""
        result = self.result or {}
        return {
            "id": self.id,
            "state": self.state.value,
            "priority": self.priority,
            "request": self.request.to_dict(),
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "attempts": self.attempts,
            "error": self.error,
            "images": [
                f"/v1/jobs/{self.id}/images/{k}.png" for k in range(len(result.get("images", [])))
            ],
            "timings": result.get("timings"),
            "notes": result.get("notes", []),
            "telemetry": result.get("telemetry"),
            "diagnosis": result.get("diagnosis"),
            "device": result.get("device"),
            "worker": self.worker,
            "dead_letter": bool(result.get("dead_letter")),
        }


@dataclass(frozen=True)
class JobEvent:
    """One event of a job. ``id`` orders events across restarts: (attempt, n)."""

    job_id: str
    attempt: int
    n: int
    type: str  # queued, started, step, succeeded, failed, cancelled, requeued
    data: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.attempt}.{self.n}"

    @property
    def key(self) -> tuple[int, int]:
        return (self.attempt, self.n)

    @property
    def terminal(self) -> bool:
        return self.type in ("succeeded", "failed", "cancelled")


def parse_event_id(text: str | None) -> tuple[int, int]:
    """'3.7' -> (3, 7); anything unreadable means 'from the start'."""
    if not text:
        return (-1, -1)
    try:
        a, n = text.split(".", 1)
        return (int(a), int(n))
    except ValueError:
        return (-1, -1)
