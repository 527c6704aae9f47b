"""What both queue backends compute the same way from their own primitives: positions,
ETAs, the position updates sent when a job starts, and waiting for a job's end.

A backend provides ``_waiting()`` (queued jobs in the order they will start),
``running()``, ``_service_times()``, ``_worker_count()``, ``_note(job_id, kind, data)``
(publish one event of a job), ``get`` and an ``EventHub`` as ``hub``.
"""

from __future__ import annotations

import asyncio
import builtins
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from steadygen.errors import SteadygenError
from steadygen.queue.eta import ServiceTimes, queued_eta_s
from steadygen.queue.job import Job, JobEvent, JobState

if TYPE_CHECKING:
    from steadygen.queue.contract import Progress
    from steadygen.queue.events import EventHub, Subscription

WAIT_RECHECK_S = 2.0  # ``wait`` reads the job again this often, in case an event was missed


class QueueBase(ABC):
    hub: EventHub

    # -- what a backend provides
    @abstractmethod
    def get(self, job_id: str) -> Job: ...

    @abstractmethod
    def running(self) -> builtins.list[Progress]: ...

    @abstractmethod
    def _waiting(self) -> builtins.list[Job]: ...

    @abstractmethod
    def _service_times(self) -> ServiceTimes: ...

    @abstractmethod
    def _worker_count(self) -> int: ...

    @abstractmethod
    def _note(self, job_id: str, kind: str, data: dict[str, Any]) -> None: ...

    # -- computed the same way for both
    def _plan(self) -> dict[str, tuple[int, float]]:
        """Each waiting job's (position, ETA in seconds)."""
        times = self._service_times()
        running_left = sum(p.eta_s or 0.0 for p in self.running())
        workers = self._worker_count()
        plan, ahead = {}, 0.0
        for position, job in enumerate(self._waiting()):
            own = times.expected_s(job.request)
            plan[job.id] = (position, queued_eta_s(own, ahead, running_left, workers))
            ahead += own
        return plan

    def position(self, job: Job) -> int:
        """0 when running or next to run; k when k jobs will start before it."""
        if job.state is not JobState.QUEUED:
            return 0
        return self._plan().get(job.id, (0, 0.0))[0]

    def eta_s(self, job: Job) -> float | None:
        """Seconds until the job ends (0 once it has)."""
        if job.state.terminal:
            return 0.0
        if job.state is JobState.RUNNING:
            for p in self.running():
                if p.job_id == job.id and p.eta_s is not None:
                    return p.eta_s
            return self._service_times().expected_s(job.request)
        planned = self._plan().get(job.id)
        if planned is None:  # it left the queue meanwhile
            return self._service_times().expected_s(job.request)
        return planned[1]

    def drain_s(self) -> float:
        """Seconds until a place frees up in a full queue (for Retry-After)."""
        running = self.running()
        if running:
            return min(p.eta_s or 0.0 for p in running)
        waiting = self._waiting()[:1]
        return self._service_times().expected_s(waiting[0].request) if waiting else 1.0

    def announce_positions(self) -> None:
        """When a job starts, every waiting job moves up: tell their followers."""
        try:
            plan = self._plan()
        except SteadygenError:  # best effort: the storage or Redis is busy
            return
        for job_id, (position, eta) in plan.items():
            self._note(job_id, "queued", {"position": position, "eta_s": round(eta, 3)})

    def open_events(self, job_id: str | None = None) -> Subscription:
        return self.hub.open(job_id)

    async def wait(self, job_id: str) -> Job:
        """Wait until the job ends; returns the finished job."""
        with self.hub.open(job_id) as sub:
            while True:  # read in a thread: SQLite's lock or Redis may make it wait
                job = await asyncio.to_thread(self.get, job_id)
                if job.state.terminal:
                    return job
                try:
                    await asyncio.wait_for(_next_terminal(sub), timeout=WAIT_RECHECK_S)
                except TimeoutError:
                    continue


async def _next_terminal(sub: Subscription) -> JobEvent:
    while True:
        event = await sub.get()
        if event.terminal:
            return event
