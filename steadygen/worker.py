"""``steadygen worker``: one engine on one device, running jobs from the Redis stream.

Run one per GPU (``--device cuda:N``), on as many machines as you like, next to one or more
``steadygen serve --queue redis://...`` API processes; they share Redis and the data
directory where images go (a shared volume). A worker:

1. reaches Redis (retrying with backoff, one log line per attempt), loads and warms its
   engine, and serves its own ``/metrics``, ``/healthz`` and ``/readyz`` on
   ``metrics_port``, and (with its sampler on) puts its latest telemetry sample in Redis
   about once a second, which the API's /v1/telemetry and dashboard show;
2. takes one job at a time: a job whose worker went silent past the visibility timeout
   first (XAUTOCLAIM), else the next new one (XREADGROUP);
3. runs it with the same ``run_job`` as the single-process server (telemetry window,
   baselines, attribution), sending progress to Redis at each step; the answer to each step
   says whether the job was cancelled, and a lease thread renews the claim;
4. writes the images (fsynced), then the result, terminal event and acknowledgement in one
   Redis script. A failed attempt goes back to the stream until ``max_attempts``, then the
   job is dead-lettered (state failed, ``result.dead_letter``).

On SIGTERM it finishes the job in hand (up to ``shutdown_grace_s``), else hands it back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from steadygen import __version__
from steadygen.analysis.baseline import Baselines
from steadygen.config import Settings
from steadygen.errors import Cancelled, GenerationError, QueueUnavailable, SteadygenError
from steadygen.queue.job import Job, JobState
from steadygen.queue.redis_queue import RedisQueue
from steadygen.queue.redis_streams import redact
from steadygen.queue.redis_telemetry import TelemetryPublisher
from steadygen.queue.redis_worker import Claim, WorkerQueue
from steadygen.queue.runner import RunContext, brief_result, run_job
from steadygen.server.metrics import CONTENT_TYPE, Metrics, StateCollector

log = logging.getLogger("steadygen.worker")

# A test hook, off unless set: a job whose prompt equals this value fails on every attempt.
FAIL_PROMPT_ENV = "STEADYGEN_TEST_FAIL_PROMPT"
HELLO_EVERY_S = 2.0
TIDY_EVERY_S = 300.0
ROUTES = ("/metrics", "/healthz", "/readyz")  # what a worker's metrics port answers


class Lease(threading.Thread):
    """Renews a claim while its job runs (a worker that stops renewing loses the job to
    another worker after the visibility timeout) and watches for cancellation."""

    def __init__(self, queue: WorkerQueue, claim: Claim, cancel: threading.Event,
                 every_s: float):
        super().__init__(name=f"steadygen-lease-{claim.job.id}", daemon=True)
        self.queue, self.claim, self.cancel, self.every_s = queue, claim, cancel, every_s
        self.lost = False  # another worker holds the job now, or it ended elsewhere
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.every_s):
            try:
                ours, cancel = self.queue.heartbeat(self.claim)
            except QueueUnavailable as exc:
                log.warning("job %s: cannot renew the claim: %s", self.claim.job.id, exc)
                continue
            self.note(ours, cancel)

    def note(self, ours: bool, cancel: bool) -> None:
        if not ours and not self.lost:
            log.warning("job %s: no longer ours (taken over after the visibility timeout, or "
                        "finished elsewhere); stopping it", self.claim.job.id)
            self.lost = True
        if cancel or not ours:
            self.cancel.set()

    def stop(self) -> None:
        self._done.set()


class Worker:
    def __init__(self, settings: Settings, engine: Any = None, consumer: str | None = None):
        from steadygen.compose import build_diagnoser, build_engine, build_sampler

        self.settings = settings
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.queue = RedisQueue.from_settings(settings, connect_attempts=10)  # counts, history
        self.jobs = WorkerQueue.from_queue(self.queue)  # take, renew, finish (same connection)
        self.engine = engine or build_engine(settings)
        settings.images_dir.mkdir(parents=True, exist_ok=True)
        self.sampler = build_sampler(settings, self.engine.device)
        self.metrics = Metrics()
        self.ctx = RunContext(engine=self.engine, images_dir=settings.images_dir,
                              baselines=Baselines(), sampler=self.sampler,
                              diagnose=build_diagnoser(settings, self.sampler))
        self.state: dict[str, Any] = {"loaded": False, "warm": False, "error": None}
        self.stopping = threading.Event()
        self.current: Claim | None = None
        self.handing_back = False
        self._cancel = threading.Event()  # the job in hand's
        self.jobs_done = 0
        self._fail_prompt = os.environ.get(FAIL_PROMPT_ENV) or None
        self.http: ThreadingHTTPServer | None = None
        self.metrics.registry.register(StateCollector(
            counts=self._counts,
            model_state=lambda: {**self.state, "version": __version__,
                                 "model": self.engine.model_name, "device": self.engine.device},
            gauges=self.sampler.gauges if self.sampler is not None else None,
            alert_counts=getattr(getattr(self.sampler, "alerts", None), "counts", None),
        ))

    # -- lifecycle ---------------------------------------------------------------------

    def serve_metrics(self) -> int:
        """/metrics, /healthz and /readyz on metrics_port (0 picks a free port)."""
        self.http = ThreadingHTTPServer((self.settings.host, self.settings.metrics_port),
                                        _handler(self))
        threading.Thread(target=self.http.serve_forever, name="steadygen-metrics",
                         daemon=True).start()
        return int(self.http.server_address[1])

    def run(self) -> int:
        """Load, warm up, then take jobs until asked to stop. Returns the exit code."""
        from steadygen.serve import rebuild_baselines, warmup_sizes

        if self.sampler is not None:
            self.sampler.start()
        hello = threading.Thread(target=self._hello_loop, name="steadygen-hello", daemon=True)
        hello.start()
        if self.sampler is not None and self.sampler.running:  # for the API's dashboard
            TelemetryPublisher(self.queue.conn, self.consumer, self.sampler,
                               self.stopping).start()
        try:
            load_s = self.engine.load()
            self.state["loaded"] = True
            sizes = warmup_sizes(self.settings, self.engine) if self.settings.warmup else []
            warm_s = self.engine.warmup(sizes)
            try:  # expectations from the recent history, shared by all workers
                self.ctx.baselines = rebuild_baselines(self.queue, self.engine)  # type: ignore[arg-type]
            except QueueUnavailable as exc:
                log.warning("starting without baselines: %s", exc)
            self.state["warm"] = True
            log.info("ready: %s on %s (load %.1f s, warm-up %.1f s)", self.engine.model_name,
                     self.engine.device, load_s, warm_s)
            print(f"steadygen worker {self.consumer}: ready, taking jobs", flush=True)
            self._loop()
        except (SteadygenError, OSError) as exc:
            self.state["error"] = str(exc)
            log.error("worker %s stops: %s", self.consumer, exc)
            raise
        finally:
            self.stopping.set()
            hello.join(5.0)  # no hello after the goodbye
            if self.sampler is not None:
                self.sampler.stop()
            try:
                self.jobs.goodbye(self.consumer)
            except QueueUnavailable as exc:
                log.warning("could not unregister from Redis: %s", exc)
            if self.http is not None:
                self.http.shutdown()
        return 0

    def request_stop(self) -> None:
        """Stop taking jobs; the job in hand may finish within shutdown_grace_s."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        claim = self.current
        if claim is not None:
            log.warning("stopping: job %s may run %.0f s more before it is handed back",
                        claim.job.id, self.settings.shutdown_grace_s)
            timer = threading.Timer(self.settings.shutdown_grace_s, self._hand_back, [claim])
            timer.daemon = True
            timer.start()

    def _hand_back(self, claim: Claim) -> None:
        if self.current is claim:
            self.handing_back = True
            self._cancel.set()

    def _loop(self) -> None:
        delay, failures, last_tidy = 0.5, 0, time.monotonic()
        while not self.stopping.is_set():
            try:
                claim = self.jobs.take(self.consumer, block_s=1.0)
                if time.monotonic() - last_tidy > TIDY_EVERY_S:
                    last_tidy = time.monotonic()
                    self.jobs.tidy()
            except QueueUnavailable as exc:
                failures += 1
                log.warning("cannot take jobs (attempt %d): %s; retrying in %.1f s",
                            failures, exc, delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, 30.0)
                continue
            delay, failures = 0.5, 0
            if claim is not None:
                self.run_claim(claim)

    def _hello_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.jobs.hello(self.consumer, self.info())
            except QueueUnavailable as exc:
                log.debug("hello to Redis failed: %s", exc)
            self.stopping.wait(HELLO_EVERY_S)

    def info(self) -> dict[str, Any]:
        claim = self.current
        return {
            "host": socket.gethostname(), "pid": os.getpid(), "model": self.engine.model_name,
            "default_side": self.engine.spec.default_side, "device": self.engine.device,
            "metrics_port": self.http.server_address[1] if self.http else None,
            "ready": bool(self.state["warm"]), "job": claim.job.id if claim else None,
            "jobs_done": self.jobs_done, "version": __version__,
        }

    def _counts(self) -> dict[str, int]:
        try:
            return self.queue.counts()
        except QueueUnavailable:
            return {}

    # -- one job -----------------------------------------------------------------------

    def run_claim(self, claim: Claim) -> None:
        job = claim.job
        self._cancel = cancel = threading.Event()
        self.current, self.handing_back = claim, False
        every_s = max(0.05, min(self.jobs.visibility_timeout_s / 4, 5.0))
        lease = Lease(self.jobs, claim, cancel, every_s)
        lease.start()
        log.info("job %s: attempt %d on %s", job.id, claim.attempt, self.consumer)

        def emit(kind: str, data: dict[str, Any]) -> None:
            if kind != "step":
                return
            try:
                lease.note(*self.jobs.publish_step(claim, data))
            except QueueUnavailable as exc:  # progress is best effort; the result is not
                log.debug("job %s: progress not sent: %s", job.id, exc)

        # queue wait: accepted -> started, both on the Redis clock
        queue_wait = max(0.0, (job.started_at or job.created_at) - job.created_at)
        try:
            if self._fail_prompt is not None and job.request.prompt == self._fail_prompt:
                raise GenerationError(f"{FAIL_PROMPT_ENV} matched: this job fails on purpose")
            record = run_job(self.ctx, job.id, job.request, emit, cancel, queue_wait)
        except Cancelled as exc:
            if lease.lost:
                return
            if self.handing_back:
                self._durably(lambda: self.jobs.requeue(claim, "", handing_back=True,
                                                        attempts=1), job, "hand back")
                return
            self._end(claim, lease, JobState.CANCELLED, {"at_step": exc.at_step})
        except Exception as exc:  # noqa: BLE001 - every failure is recorded on the job
            if not isinstance(exc, SteadygenError):
                log.exception("job %s failed unexpectedly", job.id)
            msg = str(exc) if isinstance(exc, SteadygenError) else \
                f"internal error: {type(exc).__name__}: {exc}"
            self._failed(claim, lease, msg)
        else:
            self._succeeded(claim, lease, record)
        finally:
            lease.stop()
            self.current = None

    def _succeeded(self, claim: Claim, lease: Lease, record: dict[str, Any]) -> None:
        paths = [self.settings.images_dir / rel for rel in record["images"]]
        _fsync_dirs(paths)  # the PNGs are fsynced by save_png; make their names durable too
        brief = {"result": brief_result(claim.job.id, record)}
        won = self._end(claim, lease, JobState.SUCCEEDED, brief, result=record)
        if won:
            total = float(record["timings"].get("total_s", 0.0))
            with contextlib.suppress(QueueUnavailable):  # ETAs only
                self.jobs.record_service_s(claim.job.request, total)
        else:  # a duplicate: another attempt finished first; its images are the job's
            for p in paths:
                p.unlink(missing_ok=True)
            log.warning("job %s had already finished elsewhere; this result was discarded",
                        claim.job.id)

    def _failed(self, claim: Claim, lease: Lease, msg: str) -> None:
        job = claim.job
        if lease.lost:
            return
        if claim.attempt < self.jobs.max_attempts:
            log.warning("job %s: attempt %d of %d failed: %s; it goes back in the queue",
                        job.id, claim.attempt, self.jobs.max_attempts, msg)
            self._durably(lambda: self.jobs.requeue(claim, msg, attempts=1), job, "requeue")
            return
        err = f"dead letter: failed on all {claim.attempt} attempts; last error: {msg}"
        log.error("job %s: %s", job.id, err)
        self._end(claim, lease, JobState.FAILED, {"error": err, "dead_letter": True},
                  result={"dead_letter": True}, error=err)

    def _end(self, claim: Claim, lease: Lease, state: JobState, data: dict[str, Any],
             result: dict[str, Any] | None = None, error: str | None = None) -> bool:
        won = self._durably(lambda: self.jobs.finish(claim, state, data, result=result,
                                                     error=error, attempts=1),
                            claim.job, "record the result")
        if won:
            self.jobs_done += 1
            self.metrics.job_finished(dataclasses.replace(
                claim.job, state=state, result=result, error=error))
            log.info("job %s: %s (attempt %d)", claim.job.id, state.value, claim.attempt)
        return bool(won)

    def _durably(self, write: Any, job: Job, what: str) -> Any:
        """Retry a write until Redis takes it: the job's outcome must not be lost. Each
        attempt is logged; backoff doubles up to 30 s."""
        delay, attempt = 0.5, 0
        while True:
            attempt += 1
            try:
                return write()
            except QueueUnavailable as exc:
                log.warning("job %s: cannot %s yet (attempt %d): %s; retrying in %.1f s",
                            job.id, what, attempt, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)


def _fsync_dirs(paths: list[Path]) -> None:
    for d in {p.parent for p in paths}:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _handler(worker: Worker) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, worker.metrics.render(), CONTENT_TYPE)
            elif path == "/healthz":
                self._json(200, {"ok": True, "consumer": worker.consumer})
            elif path == "/readyz":
                ready = bool(worker.state["warm"]) and worker.queue.healthy(30.0) \
                    and not worker.stopping.is_set()
                self._json(200 if ready else 503, {"ready": ready, **worker.state,
                                                   **worker.info()})
            else:
                self._json(404, {"error": f"no route {path}; try one of {', '.join(ROUTES)}"})

        def _json(self, code: int, body: dict[str, Any]) -> None:
            self._send(code, json.dumps(body).encode(), "application/json")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:  # scrapes are not worth a log line
            pass

    return Handler


def run_worker(settings: Settings, cpu_threads: int | None = None) -> int:
    """The ``steadygen worker`` command."""
    if cpu_threads is not None:  # before torch starts: it reads these once
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(cpu_threads)
    print(f"steadygen worker: queue {redact(settings.queue_url or '')}, stream "
          f"{settings.stream}, group {settings.group}", flush=True)
    worker = Worker(settings)
    port = worker.serve_metrics()
    print(f"steadygen worker {worker.consumer}: model {worker.engine.model_name} on "
          f"{worker.engine.device}; metrics on http://{settings.host}:{port}/metrics",
          flush=True)

    def on_signal(signum: int, _frame: Any) -> None:
        log.warning("signal %d: finishing the job in hand, then stopping", signum)
        worker.request_stop()
        signal.signal(signum, signal.SIG_DFL)  # a second signal ends it at once

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return worker.run()
