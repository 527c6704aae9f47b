"""The single-process queue: SQLite for durability, worker threads for the device.

One worker runs jobs one at a time (``concurrency`` above 1 runs several pipelines sharing
one set of weights at once; it exists to reproduce that bad case in benchmarks). Jobs run
by priority, then arrival. Past ``max_queue`` waiting jobs, submit raises QueueFull.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from steadygen.errors import (
    Cancelled,
    GenerationError,
    JobNotFound,
    QueueFull,
    QueueUnavailable,
    SteadygenError,
    StorageError,
)
from steadygen.queue.events import EventHub, Subscription, merge_events
from steadygen.queue.job import Job, JobEvent, JobState, new_job_id
from steadygen.queue.runner import RunContext, brief_result, expected_service_s, run_job
from steadygen.queue.store import JobStore
from steadygen.request import GenerationRequest

log = logging.getLogger("steadygen.queue")


@dataclass
class Progress:
    """The live state of a running job (for A1111's progress route and ETAs)."""

    job_id: str
    step: int = 0
    steps: int = 0
    eta_s: float | None = None
    started_mono: float = 0.0


class Recorder:
    """Receives finished jobs; the server's Prometheus metrics implement it."""

    def job_finished(self, job: Job) -> None:  # pragma: no cover - interface
        pass

    def job_submitted(self, job: Job) -> None:  # pragma: no cover - interface
        pass

    def job_rejected(self) -> None:  # pragma: no cover - interface
        pass


class LocalQueue:
    def __init__(
        self,
        store: JobStore,
        contexts: list[RunContext],
        *,
        max_queue: int,
        hub: EventHub | None = None,
        recorder: Recorder | None = None,
        log_prompts: bool = False,
    ):
        if not contexts:
            raise ValueError("LocalQueue needs at least one run context (one per worker)")
        self.store = store
        self.contexts = contexts
        self.max_queue = max_queue
        self.hub = hub or EventHub()
        self.recorder = recorder or Recorder()
        self.log_prompts = log_prompts
        self._wake = threading.Condition()
        self._stopping = False
        self._accepting = True
        self._threads: list[threading.Thread] = []
        self._cancels: dict[str, threading.Event] = {}
        self._progress: dict[str, Progress] = {}
        self._attempt_n: dict[str, list[int]] = {}  # job id -> [attempt, next n]
        self._lock = threading.Lock()
        self._submit_lock = threading.Lock()  # the depth check and the insert, together

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        for job_id in self.store.requeue_interrupted():
            log.warning("job %s was running when the server stopped; it runs again", job_id)
        for i, ctx in enumerate(self.contexts):
            t = threading.Thread(target=self._worker, args=(ctx, f"worker-{i}"), daemon=True,
                                 name=f"steadygen-worker-{i}")
            t.start()
            self._threads.append(t)

    def stop_accepting(self) -> None:
        self._accepting = False

    @property
    def accepting(self) -> bool:
        return self._accepting

    def drain(self) -> None:
        """Take no new submissions and start no more jobs; running jobs go on."""
        self._accepting = False
        with self._wake:
            self._stopping = True
            self._wake.notify_all()

    def stop(self, grace_s: float) -> bool:
        """Stop taking work; let running jobs finish within ``grace_s``. Queued jobs stay
        in the store. Returns True if every worker stopped in time."""
        self.drain()
        deadline = time.monotonic() + grace_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t for t in self._threads if t.is_alive()]
        if alive:
            with self._lock:
                for ev in self._cancels.values():
                    ev.set()
            for t in alive:
                t.join(5.0)
        return not any(t.is_alive() for t in self._threads)

    # -- the API side ------------------------------------------------------------------

    def submit(self, req: GenerationRequest, priority: int = 0) -> Job:
        if not self._accepting:
            raise QueueUnavailable("the server is shutting down and takes no new jobs; "
                                   "retry once it is back")
        with self._submit_lock:
            depth = self.depth()
            if depth >= self.max_queue:
                self.recorder.job_rejected()
                raise QueueFull(self.max_queue, retry_after_s=max(1.0, self._drain_s(1)))
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

    def list(self, limit: int = 50, state: JobState | None = None) -> list[Job]:
        return self.store.list(limit, state)

    def cancel(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job.state is JobState.QUEUED:
            event = self._event(job_id, "cancelled", {"at_step": 0})
            if self.store.cancel_queued(job_id, event):
                self.hub.publish(event)
                done = self.store.get(job_id)
                self.recorder.job_finished(done)
                return done
            job = self.store.get(job_id)
        if job.state is JobState.RUNNING:
            self.store.request_cancel(job_id)
            with self._lock:
                ev = self._cancels.get(job_id)
            if ev is not None:
                ev.set()
        return self.store.get(job_id)

    def depth(self) -> int:
        return self.store.counts()[JobState.QUEUED.value]

    def counts(self) -> dict[str, int]:
        return self.store.counts()

    def running(self) -> list[Progress]:
        with self._lock:
            return list(self._progress.values())

    def position(self, job: Job) -> int:
        """0 when running or next to run; k when k jobs will start before it."""
        if job.state is not JobState.QUEUED:
            return 0
        ids = [j.id for j in self.store.queued()]
        return ids.index(job.id) if job.id in ids else 0

    def eta_s(self, job: Job) -> float | None:
        """Seconds until the job finishes: the work ahead of it, spread over the workers,
        plus its own expected service time."""
        if job.state.terminal:
            return 0.0
        ctx = self.contexts[0]
        own = expected_service_s(ctx.engine, ctx.baselines, job.request)
        if job.state is JobState.RUNNING:
            with self._lock:
                p = self._progress.get(job.id)
            if p is not None and p.eta_s is not None:
                return p.eta_s
            return own
        ahead = 0.0
        for other in self.store.queued():
            if other.id == job.id:
                break
            ahead += expected_service_s(ctx.engine, ctx.baselines, other.request)
        ahead += self._running_remaining_s()
        return ahead / len(self.contexts) + own

    def _announce_positions(self) -> None:
        """When a job starts, every waiting job moves up: tell their followers (SSE)."""
        try:
            waiting = self.store.queued()
        except StorageError:
            return
        ctx = self.contexts[0]
        ahead = self._running_remaining_s()
        for position, job in enumerate(waiting):
            own = expected_service_s(ctx.engine, ctx.baselines, job.request)
            eta = ahead / len(self.contexts) + own
            self.hub.publish(
                self._event(job.id, "queued", {"position": position, "eta_s": round(eta, 3)})
            )
            ahead += own

    def _running_remaining_s(self) -> float:
        with self._lock:
            return sum(p.eta_s or 0.0 for p in self._progress.values())

    def _drain_s(self, jobs: int) -> float:
        ctx = self.contexts[0]
        queued = self.store.queued()[:jobs]
        return sum(expected_service_s(ctx.engine, ctx.baselines, j.request) for j in queued)

    def events_since(self, job_id: str, after: tuple[int, int]) -> list[JobEvent]:
        events = merge_events(self.store.events(job_id), self.hub.history(job_id))
        return [e for e in events if e.key > after]

    def open_events(self, job_id: str | None = None) -> Subscription:
        return self.hub.open(job_id)

    async def wait(self, job_id: str) -> Job:
        """Wait until the job ends; returns the finished job."""
        with self.hub.open(job_id) as sub:
            while True:  # the store is read in a thread: its lock may wait on SQLite
                job = await asyncio.to_thread(self.store.get, job_id)
                if job.state.terminal:
                    return job
                try:  # the store is looked at again every 2 s, in case an event was missed
                    await asyncio.wait_for(_next_terminal(sub), timeout=2.0)
                except TimeoutError:
                    continue

    # -- the worker side ---------------------------------------------------------------

    def _event(
        self, job_id: str, kind: str, data: dict[str, Any], attempt: int | None = None
    ) -> JobEvent:
        with self._lock:
            counter = self._attempt_n.get(job_id)
            if attempt is not None and (counter is None or counter[0] != attempt):
                counter = self._attempt_n[job_id] = [attempt, 0]
            elif counter is None:
                stored = self.store.events(job_id)  # after a restart: continue the numbering
                last = stored[-1] if stored else None
                counter = [last.attempt, last.n + 1] if last else [0, 0]
                self._attempt_n[job_id] = counter
            ev = JobEvent(job_id, counter[0], counter[1], kind, data)
            counter[1] += 1
            if kind in ("succeeded", "failed", "cancelled"):
                self._attempt_n.pop(job_id, None)
        return ev

    def _worker(self, ctx: RunContext, name: str) -> None:
        while True:
            with self._wake:
                if self._stopping:
                    return
            try:
                job = self.store.claim_next(name)
            except StorageError as exc:
                log.error("cannot read the queue: %s; retrying", exc)
                job = None
            if job is None:
                with self._wake:
                    if self._stopping:
                        return
                    self._wake.wait(timeout=1.0)
                continue
            self._run(ctx, job)

    def _run(self, ctx: RunContext, job: Job) -> None:
        cancel = threading.Event()
        if job.cancel_requested:
            cancel.set()
        queue_wait = (job.started_at or time.time()) - job.created_at
        # Until its first step reports, a running job is expected to take its whole
        # service time: the ETAs of the jobs behind it count it (they counted 0 before).
        expected = expected_service_s(ctx.engine, ctx.baselines, job.request)
        progress = Progress(job.id, 0, job.request.steps, expected, time.monotonic())
        with self._lock:
            self._cancels[job.id] = cancel
            self._progress[job.id] = progress
        self._publish(job.id, "started", {"attempt": job.attempts, "worker": job.worker},
                      attempt=job.attempts, durable=True)
        self._announce_positions()

        def emit(kind: str, data: dict[str, Any]) -> None:
            if kind == "step":
                progress.step, progress.eta_s = data["step"], data.get("eta_s")
            self._publish(job.id, kind, data)

        try:
            record = run_job(ctx, job.id, job.request, emit, cancel, queue_wait)
        except Cancelled as exc:
            if self._stopping and not self._cancel_requested(job.id):
                # Stopped by a shutdown past its grace period, not by a client: the job
                # stays 'running' in the store and runs again, from its start, after the
                # restart (requeue_interrupted), like a job interrupted by a crash.
                log.warning("job %s stopped by the shutdown at step %d; it runs again "
                            "after a restart", job.id, exc.at_step)
            else:
                self._end(job, JobState.CANCELLED, None, None, {"at_step": exc.at_step})
        except (GenerationError, StorageError) as exc:
            log.warning("job %s failed: %s", job.id, exc)
            self._end(job, JobState.FAILED, None, str(exc), {"error": str(exc)})
        except SteadygenError as exc:
            self._end(job, JobState.FAILED, None, str(exc), {"error": str(exc)})
        except Exception as exc:  # a bug: the job fails, the worker lives on
            log.exception("job %s failed unexpectedly", job.id)
            msg = f"internal error: {type(exc).__name__}: {exc}"
            self._end(job, JobState.FAILED, None, msg, {"error": msg})
        else:
            brief = {"result": brief_result(job.id, record)}
            self._end(job, JobState.SUCCEEDED, record, None, brief)
        finally:
            with self._lock:
                self._cancels.pop(job.id, None)
                self._progress.pop(job.id, None)

    def _cancel_requested(self, job_id: str) -> bool:
        try:
            return self.store.get(job_id).cancel_requested
        except (StorageError, JobNotFound):
            return False

    def _end(
        self,
        job: Job,
        state: JobState,
        record: dict[str, Any] | None,
        error: str | None,
        data: dict[str, Any],
    ) -> None:
        event = self._event(job.id, state.value, data)
        if not self._record_end(job, state, record, error, event):
            return  # stopping: the job stays 'running' and runs again after the restart
        self.hub.publish(event)
        with contextlib.suppress(StorageError, JobNotFound):
            self.recorder.job_finished(self.store.get(job.id))

    def _record_end(
        self,
        job: Job,
        state: JobState,
        record: dict[str, Any] | None,
        error: str | None,
        event: JobEvent,
    ) -> bool:
        """Store the job's end. While the database cannot be written (a full disk), retry
        with backoff rather than leave the job 'running' until a restart; no other job could
        be claimed meanwhile anyway. A shutdown ends the retries: the job stays 'running' in
        the store and runs again after the restart, like a job interrupted by a crash."""
        delay_s = 0.5
        while True:
            try:
                self.store.finish(job.id, state, result=record, error=error, event=event)
                return True
            except StorageError as exc:
                log.error("cannot record the end of job %s: %s; retrying in %.1f s",
                          job.id, exc, delay_s)
            with self._wake:
                if self._stopping:
                    log.warning("job %s: its end was not recorded; it runs again after a "
                                "restart", job.id)
                    return False
                self._wake.wait(delay_s)
            delay_s = min(delay_s * 2, 10.0)

    def _publish(
        self,
        job_id: str,
        kind: str,
        data: dict[str, Any],
        attempt: int | None = None,
        durable: bool = False,
    ) -> None:
        event = self._event(job_id, kind, data, attempt=attempt)
        if durable:
            try:
                self.store.add_event(event)
            except StorageError as exc:
                log.error("cannot store an event of job %s: %s", job_id, exc)
        self.hub.publish(event)


async def _next_terminal(sub: Subscription) -> JobEvent:
    while True:
        event = await sub.get()
        if event.terminal:
            return event

