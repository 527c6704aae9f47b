"""``steadygen serve``: compose the queue, the job workers and the HTTP app, then run.

Two compositions:

- ``LocalServer``: the model in this process; jobs in SQLite, run by one job worker
  thread per engine (``--concurrency``). /healthz answers at once; the model loads and
  warms up in the background and /readyz turns ready when it is done. Jobs accepted
  meanwhile wait in the queue.
- ``ApiOnlyServer`` (``--queue redis://...``): the HTTP API without a model. Jobs go to a
  Redis stream and ``steadygen worker`` processes run them on the GPUs.
"""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager
from typing import Any

from steadygen.compose import (
    build_context,
    build_diagnoser,
    build_engine,
    build_sampler,
    rebuild_baselines,
    warmup_sizes,
)
from steadygen.config import Settings
from steadygen.engine.engine import Engine
from steadygen.errors import SteadygenError
from steadygen.faults import TEST_FAULT_ENV, InjectedFault
from steadygen.queue.events import EventHub
from steadygen.queue.sqlite.queue import SQLiteQueue
from steadygen.queue.sqlite.store import JobStore
from steadygen.queue.worker import JobWorker
from steadygen.server.metrics import Metrics, SubscriberCollector
from steadygen.server.service import Readiness, Service

log = logging.getLogger("steadygen.serve")


class LocalServer:
    """Everything one ``serve`` process runs, with a start and a stop."""

    def __init__(self, settings: Settings, engine: Engine | None = None):
        self.settings = settings
        self.engine = engine or build_engine(settings)
        settings.images_dir.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(settings.db_path)
        self.sampler = build_sampler(settings, self.engine.device)
        self.metrics = Metrics()
        self.hub = EventHub()
        self.metrics.registry.register(SubscriberCollector(self.hub))
        self.fault = InjectedFault.from_env()  # a test hook; None unless the variable is set
        self.queue = SQLiteQueue(
            self.store, max_queue=settings.max_queue, max_attempts=settings.max_attempts,
            workers=settings.concurrency, hub=self.hub, recorder=self.metrics,
            log_prompts=settings.log_prompts,
        )
        self.baselines = rebuild_baselines(self.queue, self.engine)
        self.diagnose = build_diagnoser(settings, self.sampler)
        self.workers: list[JobWorker] = []
        self._threads: list[threading.Thread] = []
        self.readiness = Readiness()
        self.service = Service(
            queue=self.queue,
            model_name=self.engine.model_name,
            default_side=self.engine.spec.default_side,
            limits=settings.limits,
            images_dir=settings.images_dir,
            metrics=self.metrics,
            device=self.engine.device,
            sampler=self.sampler,
            state=lambda: self.readiness,
        )
        self._starter: threading.Thread | None = None

    def start(self) -> None:
        self.sampler.start()
        self._starter = threading.Thread(target=self._load_and_start, name="steadygen-start",
                                         daemon=True)
        self._starter.start()

    def _load_and_start(self) -> None:
        try:
            load_s = self.engine.load()
            self._set(loaded=True)
            sizes = warmup_sizes(self.settings, self.engine) if self.settings.warmup else []
            warm_s = self.engine.warmup(sizes)
            engines = [self.engine] + [self.engine.fork()
                                       for _ in range(1, self.settings.concurrency)]
            if self.fault is not None:  # armed after warm-up, so warm-up cannot spend it
                for engine in engines:
                    engine.fault_hook = self.fault
                log.warning("test hook %s=%r is armed: jobs will fail on purpose",
                            TEST_FAULT_ENV, self.fault.spec)
            self.queue.start()
            for i, engine in enumerate(engines):
                ctx = build_context(self.settings, engine, self.baselines, self.sampler,
                                    self.diagnose)
                worker = JobWorker(self.queue, ctx, f"worker-{i}", recorder=self.metrics)
                thread = threading.Thread(target=worker.run_forever, daemon=True,
                                          name=f"steadygen-worker-{i}")
                self.workers.append(worker)
                self._threads.append(thread)
                thread.start()
            self._set(warm=True)
            log.info("ready: %s on %s (load %.1f s, warm-up %.1f s on %s)",
                     self.engine.model_name, self.engine.device, load_s, warm_s, sizes)
        except (SteadygenError, OSError) as exc:
            self._set(error=str(exc))
            log.error("the model could not be loaded: %s", exc)

    def _set(self, **changes: Any) -> None:
        import dataclasses

        self.readiness = dataclasses.replace(self.readiness, **changes)

    def drain(self) -> None:
        """On SIGTERM, at once: no new submissions, no new jobs started."""
        self._set(accepting=False)
        self.queue.stop()
        for worker in self.workers:
            worker.request_stop(self.settings.shutdown_grace_s)

    def stop(self) -> None:
        """Let running jobs finish within the grace period, else hand them back (they run
        again after the restart); then close the store."""
        self.drain()
        for thread in self._threads:
            thread.join(self.settings.shutdown_grace_s + 10.0)
        self.sampler.stop()
        self.store.close()

    def describe(self) -> str:
        noise = " (images are noise: random weights)" if self.engine.spec.noise_only else ""
        return f"model {self.engine.model_name} on {self.engine.device}{noise}"


class ApiOnlyServer:
    """``serve --queue redis://...``: the HTTP API only, no model. The served model is
    ``settings.model`` when set, else the one the live workers report."""

    def __init__(self, settings: Settings):
        from steadygen.engine.models import TURBO, resolve_model
        from steadygen.queue.redis.queue import RedisQueue
        from steadygen.queue.redis.telemetry import WorkerTelemetry

        self.settings = settings
        settings.images_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = Metrics()
        self.queue = RedisQueue.from_settings(settings, recorder=self.metrics)
        self.metrics.registry.register(SubscriberCollector(self.queue.hub))
        spec = resolve_model(settings.model or TURBO)
        self.service = Service(
            queue=self.queue,
            model_name=spec.name,
            default_side=spec.default_side,
            limits=settings.limits,
            images_dir=settings.images_dir,
            metrics=self.metrics,
            device="workers",
            sampler=WorkerTelemetry(self.queue),  # the workers' latest samples
            state=self._state,
        )
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def _state(self) -> Readiness:
        up = self.queue.healthy(10.0)  # the event reader hears from Redis every second
        return Readiness(loaded=up, warm=up, accepting=self.queue.accepting,
                         error=None if up else "the Redis job queue is unreachable")

    def start(self) -> None:
        self.queue.start()
        self._watcher = threading.Thread(target=self._watch_workers, daemon=True,
                                         name="steadygen-workers")
        self._watcher.start()

    def _watch_workers(self) -> None:
        """Without --model, serve what the workers serve (they say so in Redis)."""
        while not self._stop.wait(2.0):
            try:
                workers = self.queue.workers()
            except SteadygenError:
                continue
            models = {(w.info.get("model"), w.info.get("default_side")) for w in workers}
            if self.settings.model is None and len(models) == 1:
                name, side = models.pop()
                if name and name != self.service.model_name:
                    log.info("workers serve %s; requests default to it", name)
                    self.service.model_name, self.service.default_side = name, int(side or 1024)
            elif len(models) > 1:
                names = sorted(str(m[0]) for m in models)
                log.warning("workers serve different models: %s", names)

    def drain(self) -> None:
        """On SIGTERM: answer no new submissions; the workers keep their jobs."""
        self.queue.stop_accepting()

    def stop(self) -> None:
        self._stop.set()
        self.queue.stop(self.settings.shutdown_grace_s)

    def describe(self) -> str:
        return (f"jobs go to {self.queue.describe()}; run `steadygen worker --queue ...` on "
                "each GPU")


def run_serve(settings: Settings) -> int:
    import uvicorn

    from steadygen.server.app import build_app

    server: LocalServer | ApiOnlyServer = (
        ApiOnlyServer(settings) if settings.queue_url else LocalServer(settings)
    )
    app = build_app(settings, server.service)

    @asynccontextmanager
    async def lifespan(_: Any):
        server.start()
        try:
            yield
        finally:
            server.stop()

    app.router.lifespan_context = lifespan
    print(f"steadygen: {server.describe()}", flush=True)
    print(f"steadygen: data in {settings.data_dir}", flush=True)
    print(f"steadygen: listening on http://{settings.host}:{settings.port}", flush=True)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        access_log=False,
    )

    class DrainingServer(uvicorn.Server):
        """uvicorn waits for open connections (SSE streams) before the app's shutdown
        runs; steadygen stops taking and starting jobs the moment the signal arrives."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            server.drain()
            super().handle_exit(sig, frame)

    DrainingServer(config).run()
    return 0
