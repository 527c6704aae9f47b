"""``steadygen worker``: one engine on one device, running jobs from the Redis stream.

Run one per GPU (``--device cuda:N``), on as many machines as you like, next to one or more
``steadygen serve --queue redis://...`` API processes; they share Redis and the data
directory where images go (a shared volume). A worker process:

1. reaches Redis (retrying with backoff, one log line per attempt), serves its own
   ``/metrics``, ``/healthz`` and ``/readyz`` on its metrics port (``metrics_port``, by
   default 9400 + the GPU index, so workers on one host do not collide), loads and warms
   its engine, and (with its sampler on) puts its latest telemetry sample in Redis about
   once a second, which the API's /v1/telemetry and dashboard show;
2. runs the same job worker as ``steadygen serve`` (queue/worker.py) over the Redis queue:
   claim, run, classify a failure, write the end durably;
3. says hello every 2 s (and tidies the consumer group every 5 minutes), goodbye at the end.

On SIGTERM it finishes the job in hand (up to ``shutdown_grace_s``), else hands it back.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from steadygen import __version__
from steadygen.analysis.baseline import Baselines
from steadygen.compose import (
    build_context,
    build_diagnoser,
    build_engine,
    build_sampler,
    gpu_index,
    rebuild_baselines,
    warmup_sizes,
)
from steadygen.config import Settings
from steadygen.engine.engine import Engine
from steadygen.errors import ConfigError, QueueUnavailable, SteadygenError
from steadygen.faults import fail_prompt_check
from steadygen.queue.redis.connection import redact
from steadygen.queue.redis.queue import RedisQueue
from steadygen.queue.redis.telemetry import TelemetryPublisher
from steadygen.queue.worker import JobWorker
from steadygen.server.metrics import CONTENT_TYPE, Metrics, QueueCollector, StateCollector
from steadygen.server.service import Readiness

log = logging.getLogger("steadygen.worker")

HELLO_EVERY_S = 2.0
TIDY_EVERY_S = 300.0
BASE_METRICS_PORT = 9400
ROUTES = ("/metrics", "/healthz", "/readyz")  # what a worker's metrics port answers


def metrics_port_for(settings: Settings, device: str) -> int:
    """``metrics_port`` when set (0: any free port), else 9400 + the GPU index."""
    if settings.metrics_port is not None:
        return settings.metrics_port
    return BASE_METRICS_PORT + gpu_index(device)


class WorkerProcess:
    def __init__(self, settings: Settings, engine: Engine | None = None,
                 consumer: str | None = None):
        self.settings = settings
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.metrics = Metrics()
        self.engine = engine or build_engine(settings)  # not loaded yet: run() loads it
        self._serving = False
        self.http = self._bind_metrics()  # before Redis: a port in use says so at once
        self.queue = RedisQueue.from_settings(settings, connect_attempts=10,
                                              recorder=self.metrics)
        settings.images_dir.mkdir(parents=True, exist_ok=True)
        self.sampler = build_sampler(settings, self.engine.device)
        ctx = build_context(settings, self.engine, Baselines(), self.sampler,
                            build_diagnoser(settings, self.sampler))
        self.job_worker = JobWorker(self.queue, ctx, self.consumer, recorder=self.metrics,
                                    check_job=fail_prompt_check())
        self.readiness = Readiness()
        self.stopping = self.job_worker.stopping
        self.metrics.registry.register(StateCollector(
            counts=self._counts,
            model_state=lambda: {**self.readiness.to_dict(), "version": __version__,
                                 "model": self.engine.model_name, "device": self.engine.device},
            gauges=self.sampler.gauges,
            alert_counts=self.sampler.alerts.counts if self.sampler.alerts else None,
        ))
        self.metrics.registry.register(QueueCollector(self.queue.stats))

    # -- lifecycle ---------------------------------------------------------------------

    def _bind_metrics(self) -> ThreadingHTTPServer:
        """The metrics port, bound; a port already taken is a ConfigError that says what to
        do."""
        port = metrics_port_for(self.settings, self.engine.device)
        try:
            return ThreadingHTTPServer((self.settings.host, port), _handler(self))
        except OSError as exc:
            raise ConfigError(
                f"the worker's metrics port {self.settings.host}:{port} cannot be used "
                f"({exc.strerror or exc}); give each worker its own with --metrics-port N "
                "(0 picks a free one)"
            ) from exc

    def serve_metrics(self) -> int:
        """/metrics, /healthz and /readyz on the metrics port; returns the port."""
        self._serving = True
        threading.Thread(target=self.http.serve_forever, name="steadygen-metrics",
                         daemon=True).start()
        return int(self.http.server_address[1])

    def run(self) -> int:
        """Load, warm up, then take jobs until asked to stop. Returns the exit code."""
        self.sampler.start()
        hello = threading.Thread(target=self._hello_loop, name="steadygen-hello", daemon=True)
        hello.start()
        if self.sampler.running:  # for the API's dashboard
            TelemetryPublisher(self.queue.conn, self.consumer, self.sampler,
                               self.stopping).start()
        try:
            load_s = self.engine.load()
            self.readiness = dataclasses.replace(self.readiness, loaded=True)
            sizes = warmup_sizes(self.settings, self.engine) if self.settings.warmup else []
            warm_s = self.engine.warmup(sizes)
            try:  # expectations from the recent history, shared by all workers
                self.job_worker.ctx.baselines = rebuild_baselines(self.queue, self.engine)
            except QueueUnavailable as exc:
                log.warning("starting without baselines: %s", exc)
            self.readiness = dataclasses.replace(self.readiness, warm=True)
            log.info("ready: %s on %s (load %.1f s, warm-up %.1f s)", self.engine.model_name,
                     self.engine.device, load_s, warm_s)
            print(f"steadygen worker {self.consumer}: ready, taking jobs", flush=True)
            self.job_worker.run_forever()
        except (SteadygenError, OSError) as exc:
            self.readiness = dataclasses.replace(self.readiness, error=str(exc))
            log.error("worker %s stops: %s", self.consumer, exc)
            raise
        finally:
            self.stopping.set()
            hello.join(5.0)  # no hello after the goodbye
            self.sampler.stop()
            try:
                self.queue.goodbye(self.consumer)
            except QueueUnavailable as exc:
                log.warning("could not unregister from Redis: %s", exc)
            if self._serving:
                self.http.shutdown()
            self.http.server_close()
        return 0

    def request_stop(self) -> None:
        """Stop taking jobs; the job in hand may finish within shutdown_grace_s."""
        self.job_worker.request_stop(self.settings.shutdown_grace_s)

    def _hello_loop(self) -> None:
        last_tidy = time.monotonic()
        while not self.stopping.is_set():
            try:
                self.queue.hello(self.consumer, self.info())
                if time.monotonic() - last_tidy > TIDY_EVERY_S:
                    last_tidy = time.monotonic()
                    self.queue.tidy()
            except QueueUnavailable as exc:
                log.debug("hello to Redis failed: %s", exc)
            self.stopping.wait(HELLO_EVERY_S)

    def info(self) -> dict[str, Any]:
        claim = self.job_worker.current
        return {
            "host": socket.gethostname(), "pid": os.getpid(), "model": self.engine.model_name,
            "default_side": self.engine.spec.default_side, "device": self.engine.device,
            "metrics_port": self.http.server_address[1],
            "ready": self.readiness.warm, "job": claim.job.id if claim else None,
            "jobs_done": self.job_worker.jobs_done, "version": __version__,
        }

    def ready(self) -> bool:
        return (self.readiness.warm and self.queue.healthy(30.0)
                and not self.stopping.is_set())

    def _counts(self) -> dict[str, int]:
        try:
            return self.queue.counts()
        except QueueUnavailable:
            return {}


def _handler(worker: WorkerProcess) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, worker.metrics.render(), CONTENT_TYPE)
            elif path == "/healthz":
                self._json(200, {"ok": True, "consumer": worker.consumer})
            elif path == "/readyz":
                ready = worker.ready()
                self._json(200 if ready else 503, {**worker.readiness.to_dict(),
                                                   **worker.info(), "ready": ready})
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
    worker = WorkerProcess(settings)
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
