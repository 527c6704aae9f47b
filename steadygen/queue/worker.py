"""The job worker: claim -> run -> classify a failure -> write the end durably -> metrics.

One loop for both modes: ``steadygen serve`` runs one per engine in threads over the SQLite
queue, ``steadygen worker`` runs one over the Redis queue. The queue is storage and
transport only (the ``JobQueue`` contract); everything about running a job is here.

A job's path through it::

    claim                       the queue marks it running and sends 'started'
    run_job (runner.py)         engine, telemetry window, attribution; steps -> progress()
    success                     images durable -> finish(succeeded) -> observe_service
    Cancelled                   by a client: finish(cancelled); by a shutdown: retry
                                (handing back, not an attempt); by losing the lease: nothing
    a failure                   permanent (bad input found late): finish(failed); otherwise
                                retry while attempts remain, then finish(failed, dead letter)
    a failure of the worker     outside the job (a bug, a queue call that gave up): a failed
                                attempt as above, so no live worker keeps a job it dropped

Every end is written with retries (backoff) until the queue takes it or the worker stops:
an outcome is never dropped because the disk or Redis had a bad moment; if the worker
stops first, the job is still 'running' and runs again (local: at the next start; Redis:
after the visibility timeout).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from steadygen.backoff import Backoff
from steadygen.errors import (
    Cancelled,
    ConfigError,
    InvalidRequest,
    ModelError,
    OutOfMemory,
    QueueUnavailable,
    SteadygenError,
    StorageError,
)
from steadygen.queue.contract import Claim, JobQueue, NullRecorder, Recorder
from steadygen.queue.job import JobState
from steadygen.queue.runner import RunContext, brief_result, run_job

log = logging.getLogger("steadygen.worker")

T = TypeVar("T")
TRANSIENT = (QueueUnavailable, StorageError)  # the queue's backend had a bad moment
CLAIM_WAITED_S = 0.25  # a claim that took longer waited for a job: not service time
# Running it again cannot help: bad input found late, a setting, a model that cannot run, or
# a request too large for the card (the message says to make it smaller).
PERMANENT = (InvalidRequest, ConfigError, ModelError, OutOfMemory)


def classify_failure(exc: BaseException) -> tuple[str, bool]:
    """(the message the job records, whether another attempt may succeed).

    Failures of the job itself are final: bad input found late, a request too large for the
    card, images that cannot be written to the data directory (every worker shares it).
    Anything else (a generation error, a bug) may be this worker's: the job goes back to
    the queue while attempts remain."""
    causes = [exc]
    while causes[-1].__cause__ is not None and len(causes) < 8:
        causes.append(causes[-1].__cause__)
    final = isinstance(exc, PERMANENT) or any(isinstance(c, StorageError) for c in causes)
    if isinstance(exc, SteadygenError):
        return str(exc), not final
    return f"internal error: {type(exc).__name__}: {exc}", not final


class Lease(threading.Thread):
    """Renews a claim while its job runs (Redis: a worker that stops renewing loses the
    job to another after the visibility timeout) and passes on a cancel request."""

    def __init__(self, queue: JobQueue, claim: Claim, cancel: threading.Event, every_s: float):
        super().__init__(name=f"steadygen-lease-{claim.job.id}", daemon=True)
        self.queue, self.claim, self.cancel, self.every_s = queue, claim, cancel, every_s
        self.lost = False  # another worker holds the job now, or it ended elsewhere
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.every_s):
            try:
                state = self.queue.heartbeat(self.claim)
            except TRANSIENT as exc:
                log.warning("job %s: cannot renew the claim: %s", self.claim.job.id, exc)
                continue
            self.note(state.ours, state.cancel)

    def note(self, ours: bool, cancel: bool) -> None:
        if not ours and not self.lost:
            log.warning("job %s: no longer ours (taken over after the visibility timeout, or "
                        "finished elsewhere); stopping it", self.claim.job.id)
            self.lost = True
        if cancel or not ours:
            self.cancel.set()

    def stop(self) -> None:
        self._done.set()


class JobWorker:
    """Takes jobs from ``queue`` one at a time and runs them on ``ctx``'s engine."""

    def __init__(
        self,
        queue: JobQueue,
        ctx: RunContext,
        name: str,
        *,
        recorder: Recorder | None = None,
        check_job: Callable[[Any], None] | None = None,
        claim_block_s: float = 1.0,
    ):
        self.queue = queue
        self.ctx = ctx
        self.name = name
        self.recorder = recorder or NullRecorder()
        self.check_job = check_job  # a test hook (steadygen/faults.py); None normally
        self.claim_block_s = claim_block_s
        self.stopping = threading.Event()
        self.current: Claim | None = None
        self.jobs_done = 0
        self._handing_back = False
        self._cancel = threading.Event()  # the job in hand's

    # -- the loop ----------------------------------------------------------------------

    def run_forever(self) -> None:
        """Claim and run jobs until ``request_stop``."""
        backoff = Backoff(0.5, 30.0)
        while not self.stopping.is_set():
            asked = time.monotonic()
            try:
                claim = self.queue.claim(self.name, self.claim_block_s)
            except TRANSIENT as exc:
                delay = backoff.next_s()
                log.warning("%s cannot take jobs (attempt %d): %s; retrying in %.1f s",
                            self.name, backoff.failures, exc, delay)
                self.stopping.wait(delay)
                continue
            backoff.reset()
            if claim is not None:
                # Service starts with the claim, unless the claim waited for a job to arrive.
                got = time.monotonic()
                try:
                    self.run_claim(claim, started=asked if got - asked < CLAIM_WAITED_S
                                   else got)
                except Exception as exc:  # a bug past the job's own handling
                    # The worker lives on, and the job must not stay held by a live worker
                    # (nothing would ever run it): it is a failed attempt, retried or
                    # dead-lettered like any other. A job that already ended stays ended.
                    log.exception("job %s: the worker's handling of it failed", claim.job.id)
                    try:
                        self._failed(claim, None, f"worker error: {type(exc).__name__}: {exc}",
                                     retryable=True)
                    except Exception:
                        log.exception("job %s: could not be given back either; it runs again "
                                      "when this worker stops", claim.job.id)

    def request_stop(self, grace_s: float) -> None:
        """Take no more jobs; the job in hand may finish within ``grace_s``, then it is
        handed back to the queue (it runs again later, from its start)."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        claim = self.current
        if claim is None:
            return
        log.warning("stopping: job %s may run %.0f s more before it is handed back",
                    claim.job.id, grace_s)
        timer = threading.Timer(grace_s, self._hand_back, [claim])
        timer.daemon = True
        timer.start()

    def _hand_back(self, claim: Claim) -> None:
        if self.current is claim:
            self._handing_back = True
            self._cancel.set()

    # -- one job -----------------------------------------------------------------------

    def run_claim(self, claim: Claim, started: float | None = None) -> None:
        """Run one claimed job to its durable end. ``started`` (monotonic): when the worker
        began on it (the claim), from which its service time counts."""
        self._cancel = cancel = threading.Event()
        self.current, self._handing_back = claim, False
        lease = Lease(self.queue, claim, cancel, self.queue.heartbeat_every_s or 0.0)
        if self.queue.heartbeat_every_s:
            lease.start()
        try:  # however this ends, the claim is renewed only while the job is in hand
            self._run_held(claim, lease, cancel,
                           started if started is not None else time.monotonic())
        finally:
            lease.stop()
            self.current = None

    def _run_held(self, claim: Claim, lease: Lease, cancel: threading.Event,
                  started: float) -> None:
        job = claim.job
        try:  # progress for the ETAs behind it; best effort, like every progress report
            self.queue.set_expected(claim, self.queue.eta_s(job) or 0.0)
        except TRANSIENT as exc:
            log.debug("job %s: expected service not published: %s", job.id, exc)
        try:  # every waiting job moved up
            self.queue.announce_positions()
        except TRANSIENT as exc:
            log.debug("positions not announced: %s", exc)
        log.info("job %s: attempt %d on %s", job.id, claim.attempt, self.name)

        def emit(kind: str, data: dict[str, Any]) -> None:
            try:
                state = self.queue.progress(claim, data)
            except TRANSIENT as exc:  # progress is best effort; the result is not
                log.debug("job %s: progress not sent: %s", job.id, exc)
                return
            lease.note(state.ours, state.cancel)

        # queue wait: accepted -> started, both on the queue's clock
        queue_wait = max(0.0, (job.started_at or job.created_at) - job.created_at)
        try:
            if self.check_job is not None:
                self.check_job(job)
            record = run_job(self.ctx, job.id, job.request, emit, cancel, queue_wait)
        except Cancelled as exc:
            self._cancelled(claim, lease, exc.at_step)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded on the job
            message, retryable = classify_failure(exc)
            if not isinstance(exc, SteadygenError):
                log.exception("job %s failed unexpectedly", job.id)
            self._failed(claim, lease, message, retryable)
        else:
            self._succeeded(claim, record, started)

    def _succeeded(self, claim: Claim, record: dict[str, Any], started: float) -> None:
        paths = [self.ctx.images_dir / rel for rel in record["images"]]
        _fsync_dirs(paths)  # the PNGs are fsynced by save_png; make their names durable too
        record["service_s"] = round(time.monotonic() - started, 6)  # up to its own write
        brief = {"result": brief_result(claim.job.id, record)}
        if self._end(claim, JobState.SUCCEEDED, brief, result=record):
            # What the ETAs of the jobs behind it must count: claim to recorded end.
            service_s = time.monotonic() - started
            try:
                cold = bool(record["timings"].get("first_of_shape"))
                self.queue.observe_service(claim.job.request, service_s, cold)
            except TRANSIENT as exc:  # ETAs only
                log.debug("service time not recorded: %s", exc)
        else:  # a duplicate: another attempt finished first; its images are the job's
            for p in paths:
                p.unlink(missing_ok=True)
            log.warning("job %s had already finished elsewhere; this result was discarded",
                        claim.job.id)

    def _cancelled(self, claim: Claim, lease: Lease, at_step: int) -> None:
        if lease.lost:
            return
        if self._handing_back:
            log.warning("job %s stopped by the shutdown at step %d; it runs again later",
                        claim.job.id, at_step)
            self._durably(lambda: self.queue.retry(claim, "", handing_back=True), claim,
                          "record the hand-back")
            return
        self._end(claim, JobState.CANCELLED, {"at_step": at_step})

    def _failed(self, claim: Claim, lease: Lease | None, message: str,
                retryable: bool) -> None:
        job = claim.job
        if lease is not None and lease.lost:
            return
        if retryable and claim.attempt < self.queue.max_attempts:
            log.warning("job %s: attempt %d of %d failed: %s; it goes back in the queue",
                        job.id, claim.attempt, self.queue.max_attempts, message)
            self._durably(lambda: self.queue.retry(claim, message), claim, "record the retry")
            return
        if retryable and claim.attempt > 1:
            message = (f"dead letter: failed on all {claim.attempt} attempts; last error: "
                       f"{message}")
            log.error("job %s: %s", job.id, message)
            self._end(claim, JobState.FAILED, {"error": message, "dead_letter": True},
                      result={"dead_letter": True}, error=message)
            return
        log.warning("job %s failed: %s", job.id, message)
        self._end(claim, JobState.FAILED, {"error": message}, error=message)

    def _end(self, claim: Claim, state: JobState, data: dict[str, Any],
             result: dict[str, Any] | None = None, error: str | None = None) -> bool:
        won = self._durably(lambda: self.queue.finish(claim, state, data, result=result,
                                                      error=error), claim, "record the end")
        if won:
            self.jobs_done += 1
            try:
                self.recorder.job_finished(self.queue.get(claim.job.id))
            except TRANSIENT as exc:
                log.debug("job %s: metrics not recorded: %s", claim.job.id, exc)
            log.info("job %s: %s (attempt %d)", claim.job.id, state.value, claim.attempt)
        return bool(won)

    def _durably(self, write: Callable[[], T], claim: Claim, what: str) -> T | None:
        """Retry a write until the queue takes it, or the worker is stopping (then the job
        stays 'running' and runs again later). Each failed attempt is logged."""
        backoff = Backoff(0.5, 10.0)
        while True:
            try:
                return write()
            except TRANSIENT as exc:
                delay = backoff.next_s()
                log.error("cannot %s of job %s yet (attempt %d): %s; retrying in %.1f s",
                          what, claim.job.id, backoff.failures, exc, delay)
            if self.stopping.wait(delay):
                log.warning("could not %s of job %s before stopping; it runs again later",
                            what, claim.job.id)
                return None


def _fsync_dirs(paths: list[Path]) -> None:
    for d in {p.parent for p in paths}:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
