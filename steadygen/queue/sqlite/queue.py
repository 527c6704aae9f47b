"""The single-process queue: jobs in SQLite (durable), events through an in-memory hub.

Storage and transport only: the job worker (queue/worker.py) runs the jobs. Jobs start by
priority, then arrival. Past ``max_queue`` waiting jobs, submit raises QueueFull. A job
left running by a crash runs again at the next start (attempt + 1).
"""

from __future__ import annotations

import builtins
import logging
import threading
from typing import Any

from steadygen.errors import JobNotFound, QueueFull, QueueUnavailable, StorageError
from steadygen.queue.base import QueueBase
from steadygen.queue.contract import (
    Claim,
    LeaseState,
    NullRecorder,
    Progress,
    QueueStats,
    Recorder,
)
from steadygen.queue.eta import ServiceTimes
from steadygen.queue.events import EventHub, merge_events
from steadygen.queue.job import Job, JobEvent, JobState, new_job_id
from steadygen.queue.sqlite.store import JobStore
from steadygen.request import GenerationRequest

log = logging.getLogger("steadygen.queue")


class SQLiteQueue(QueueBase):
    heartbeat_every_s = None  # one process: no lease to renew

    def __init__(
        self,
        store: JobStore,
        *,
        max_queue: int,
        max_attempts: int,
        workers: int = 1,
        hub: EventHub | None = None,
        recorder: Recorder | None = None,
        log_prompts: bool = False,
        history: int = 1000,
    ):
        self.store = store
        self.max_queue = max_queue
        self.max_attempts = max_attempts
        self.workers = workers
        self.hub = hub or EventHub()
        self.recorder = recorder or NullRecorder()
        self.log_prompts = log_prompts
        self._wake = threading.Condition()
        self._accepting = True
        self._stopping = False
        self._lock = threading.Lock()
        self._progress: dict[str, Progress] = {}
        self._cancels: set[str] = set()
        self._counters: dict[str, list[int]] = {}  # job id -> [attempt, next n]
        self._submit_lock = threading.Lock()  # the depth check and the insert, together
        self._times = ServiceTimes()
        for job in store.recent_succeeded(history):
            result = job.result or {}
            if result.get("service_s") is not None:
                cold = bool((result.get("timings") or {}).get("first_of_shape"))
                self._times.observe(job.request, result["service_s"], cold)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        for job_id in self.store.requeue_interrupted():
            log.warning("job %s was running when the server stopped; it runs again", job_id)

    def stop_accepting(self) -> None:
        self._accepting = False

    @property
    def accepting(self) -> bool:
        return self._accepting

    def stop(self, grace_s: float = 0.0) -> None:
        """No more submissions or claims; wakes workers waiting for a job."""
        self._accepting = False
        with self._wake:
            self._stopping = True
            self._wake.notify_all()

    def healthy(self) -> bool:
        return True

    # -- the API side ------------------------------------------------------------------

    def submit(self, req: GenerationRequest, priority: int = 0) -> Job:
        if not self._accepting:
            raise QueueUnavailable("the server is shutting down and takes no new jobs; "
                                   "retry once it is back")
        with self._submit_lock:
            depth = self.depth()
            if depth >= self.max_queue:
                self.recorder.job_rejected()
                raise QueueFull(self.max_queue, retry_after_s=max(1.0, self.drain_s()))
            job = Job(id=new_job_id(), request=req, priority=priority)
            event = self._event(job.id, "queued", {"position": depth}, attempt=0)
            self.store.insert(job, event)
        self.hub.publish(event)
        if self.log_prompts:
            log.info("job %s queued: %r %s", job.id, req.prompt, req.size)
        else:
            log.info("job %s queued: %s, %d steps, n=%d", job.id, req.size, req.steps, req.n)
        self.recorder.job_submitted(job)
        with self._wake:
            self._wake.notify()
        return job

    def get(self, job_id: str) -> Job:
        return self.store.get(job_id)

    def list(self, limit: int = 50, state: JobState | None = None) -> builtins.list[Job]:
        return self.store.list(limit, state)

    def recent_succeeded(self, limit: int) -> builtins.list[Job]:
        return self.store.recent_succeeded(limit)

    def cancel(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job.state is JobState.QUEUED:
            event = self._event(job_id, "cancelled", {"at_step": 0})
            if self.store.cancel_queued(job_id, event):
                self._forget(job_id)
                self.hub.publish(event)
                done = self.store.get(job_id)
                self.recorder.job_finished(done)
                return done
            job = self.store.get(job_id)
        if job.state is JobState.RUNNING:
            self.store.request_cancel(job_id)
            with self._lock:
                self._cancels.add(job_id)
        return self.store.get(job_id)

    def depth(self) -> int:
        return self.store.counts()[JobState.QUEUED.value]

    def counts(self) -> dict[str, int]:
        return self.store.counts()

    def running(self) -> builtins.list[Progress]:
        with self._lock:
            return [Progress(**vars(p)) for p in self._progress.values()]

    def stats(self) -> QueueStats:
        counts = self.counts()
        return QueueStats(depth=counts[JobState.QUEUED.value],
                          running=counts[JobState.RUNNING.value], workers=self.workers)

    def events_since(self, job_id: str, after: tuple[int, int]) -> builtins.list[JobEvent]:
        events = merge_events(self.store.events(job_id), self.hub.history(job_id))
        return [e for e in events if e.key > after]

    # -- what QueueBase computes from ------------------------------------------------

    def _waiting(self) -> builtins.list[Job]:
        return self.store.queued()

    def _service_times(self) -> ServiceTimes:
        return self._times

    def _worker_count(self) -> int:
        return self.workers

    def _note(self, job_id: str, kind: str, data: dict[str, Any]) -> None:
        self.hub.publish(self._event(job_id, kind, data))

    # -- the worker side ---------------------------------------------------------------

    def claim(self, worker: str, block_s: float) -> Claim | None:
        """The next job (priority, then arrival), marked running with its 'started' event
        stored; None when nothing arrives within ``block_s`` or the queue is stopping."""
        with self._wake:
            if self._stopping:
                return None
        job = self.store.claim_next(worker, self.max_attempts)
        if job is None:
            with self._wake:
                if not self._stopping:
                    self._wake.wait(timeout=block_s)
            return None
        started = self.store.started_event(job.id) or JobEvent(
            job.id, job.attempts, 0, "started", {"attempt": job.attempts, "worker": worker})
        with self._lock:
            self._counters[job.id] = [started.attempt, started.n + 1]
            self._progress[job.id] = Progress(job.id, 0, job.request.steps)
            if job.cancel_requested:
                self._cancels.add(job.id)
        self.hub.publish(started)
        return Claim(job=job, attempt=job.attempts, worker=worker)

    def heartbeat(self, claim: Claim) -> LeaseState:
        with self._lock:
            return LeaseState(ours=claim.job.id in self._progress,
                              cancel=claim.job.id in self._cancels)

    def progress(self, claim: Claim, data: dict[str, Any]) -> LeaseState:
        with self._lock:
            p = self._progress.get(claim.job.id)
            if p is not None:
                p.step, p.steps = data.get("step", p.step), data.get("steps", p.steps)
                p.eta_s = data.get("eta_s", p.eta_s)
                p.preview = data.get("preview", p.preview)
        self.hub.publish(self._event(claim.job.id, "step", data))
        return self.heartbeat(claim)

    def set_expected(self, claim: Claim, eta_s: float) -> None:
        """Until its first step, a running job is expected to take its whole service."""
        with self._lock:
            p = self._progress.get(claim.job.id)
            if p is not None and p.eta_s is None:
                p.eta_s = eta_s

    def finish(self, claim: Claim, state: JobState, data: dict[str, Any], *,
               result: dict[str, Any] | None = None, error: str | None = None) -> bool:
        job_id = claim.job.id
        event = self._event(job_id, state.value, data)
        won = self.store.finish(job_id, state, result=result, error=error, event=event,
                                attempt=None if state is JobState.SUCCEEDED else claim.attempt)
        if won:
            self._forget(job_id)
            self.hub.publish(event)
        return won

    def retry(self, claim: Claim, error: str, *, handing_back: bool = False) -> bool:
        job_id = claim.job.id
        left = self.max_attempts - claim.attempt + int(handing_back)
        event = self._event(job_id, "requeued", {"attempt": claim.attempt,
                                                 "error": error or None,
                                                 "attempts_left": left})
        done = self.store.requeue(job_id, claim.attempt, event, handing_back=handing_back)
        if done:
            self._forget(job_id)
            self.hub.publish(event)
            with self._wake:
                self._wake.notify()
        return done

    def observe_service(self, req: GenerationRequest, service_s: float,
                        cold: bool = False) -> None:
        self._times.observe(req, service_s, cold)

    def _forget(self, job_id: str) -> None:
        with self._lock:
            self._progress.pop(job_id, None)
            self._cancels.discard(job_id)
            self._counters.pop(job_id, None)

    # -- event numbering ---------------------------------------------------------------

    def _event(
        self, job_id: str, kind: str, data: dict[str, Any], attempt: int | None = None
    ) -> JobEvent:
        """The job's next event: (attempt, n), continuing the stored numbering after a
        restart; a new attempt starts at n = 0."""
        with self._lock:
            counter = self._counters.get(job_id)
            if attempt is not None and (counter is None or counter[0] != attempt):
                counter = self._counters[job_id] = [attempt, 0]
            elif counter is None:
                try:
                    stored = self.store.events(job_id)
                except (StorageError, JobNotFound):
                    stored = []
                last = stored[-1] if stored else None
                counter = [last.attempt, last.n + 1] if last else [0, 0]
                self._counters[job_id] = counter
            event = JobEvent(job_id, counter[0], counter[1], kind, data)
            counter[1] += 1
        return event
