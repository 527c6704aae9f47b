"""The job queue's contract: what the HTTP routes and the job worker may ask of a queue,
whichever backend holds the jobs (SQLite in one process, or Redis Streams for many workers).

Two sides of one queue::

    API side      submit, get, list, cancel, counts, depth, running, position, eta_s,
                  events_since, open_events, wait, recent_succeeded, accepting, stats
    worker side   claim -> heartbeat / progress ... -> finish | retry, observe_service

Promises every backend keeps (tests/queue/test_contract.py checks each on both):

- a job is durable before ``submit`` returns (the client hears 202 after that);
- jobs start by priority (higher first), then by arrival;
- past ``max_queue`` waiting jobs ``submit`` raises QueueFull (429); while the server is
  shutting down it raises QueueUnavailable (503);
- a queued job cancels at once; a running one is told through ``progress``/``heartbeat``;
- a claimed job whose worker stops without finishing runs again, attempt + 1 (local: at
  the next start; Redis: after the visibility timeout); a job that failed ``max_attempts``
  times ends failed with ``dead_letter``;
- every state change is an event (queued, started, step, requeued, and a terminal one);
  lifecycle events are stored, so ``events_since`` resumes after a restart;
- ``finish`` is idempotent: the first terminal write wins, a later one returns False.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from steadygen.queue.job import Job, JobEvent, JobState

if TYPE_CHECKING:
    from steadygen.queue.events import Subscription
    from steadygen.request import GenerationRequest


@dataclass
class Progress:
    """The live state of a running job (A1111's progress route, ETAs, the page)."""

    job_id: str
    step: int = 0
    steps: int = 0
    eta_s: float | None = None  # seconds until it ends, from its own steps so far
    started_mono: float = 0.0  # time.monotonic() in this process when it started
    preview: str | None = None  # the latest live preview (base64 JPEG), when asked for


@dataclass(frozen=True)
class Claim:
    """A job a worker has started. ``token`` is the backend's handle (the Redis stream
    entry; unused by SQLite); ``attempt`` fences a worker that lost the job."""

    job: Job
    attempt: int
    worker: str
    token: str = ""


@dataclass(frozen=True)
class LeaseState:
    """The answer to a heartbeat or a progress report."""

    ours: bool  # False: another worker holds the job now, or it ended elsewhere
    cancel: bool  # a client asked to cancel it


@dataclass(frozen=True)
class QueueStats:
    """The queue as /metrics (and KEDA) see it; Redis-only figures are None locally."""

    depth: int  # jobs waiting
    running: int
    workers: int  # workers taking jobs (threads locally, processes that said hello in Redis)
    lag: int | None = None  # stream entries not yet delivered to any worker
    pending: int | None = None  # delivered and not yet acknowledged
    stream_length: int | None = None


class Recorder(Protocol):
    """Receives job lifecycle facts; the server's Prometheus metrics implement it."""

    def job_submitted(self, job: Job) -> None: ...

    def job_rejected(self) -> None: ...

    def job_finished(self, job: Job) -> None: ...


class NullRecorder:
    def job_submitted(self, job: Job) -> None:
        pass

    def job_rejected(self) -> None:
        pass

    def job_finished(self, job: Job) -> None:
        pass


class JobQueue(Protocol):
    """Storage and transport of jobs; running them is the job worker's (queue/worker.py).
    Signatures say ``builtins.list`` because the method ``list`` hides the builtin."""

    max_queue: int
    max_attempts: int

    # -- lifecycle
    def start(self) -> None: ...

    def stop_accepting(self) -> None: ...

    @property
    def accepting(self) -> bool: ...

    def stop(self, grace_s: float) -> None: ...

    def healthy(self) -> bool: ...

    # -- the API side
    def submit(self, req: GenerationRequest, priority: int = 0) -> Job: ...

    def get(self, job_id: str) -> Job: ...

    def list(self, limit: int = 50, state: JobState | None = None) -> builtins.list[Job]: ...

    def cancel(self, job_id: str) -> Job: ...

    def counts(self) -> dict[str, int]: ...

    def depth(self) -> int: ...

    def running(self) -> builtins.list[Progress]: ...

    def position(self, job: Job) -> int: ...

    def eta_s(self, job: Job) -> float | None: ...

    def events_since(self, job_id: str, after: tuple[int, int]) -> builtins.list[JobEvent]: ...

    def open_events(self, job_id: str | None = None) -> Subscription: ...

    async def wait(self, job_id: str) -> Job: ...

    def recent_succeeded(self, limit: int) -> builtins.list[Job]: ...

    def stats(self) -> QueueStats: ...

    # -- the worker side
    def claim(self, worker: str, block_s: float) -> Claim | None: ...

    def heartbeat(self, claim: Claim) -> LeaseState: ...

    def progress(self, claim: Claim, data: dict[str, Any]) -> LeaseState: ...

    def finish(self, claim: Claim, state: JobState, data: dict[str, Any], *,
               result: dict[str, Any] | None = None, error: str | None = None) -> bool: ...

    def retry(self, claim: Claim, error: str, *, handing_back: bool = False) -> bool: ...

    def set_expected(self, claim: Claim, eta_s: float) -> None: ...

    def announce_positions(self) -> None: ...

    def observe_service(self, req: GenerationRequest, service_s: float,
                        cold: bool = False) -> None: ...

    @property
    def heartbeat_every_s(self) -> float | None: ...
