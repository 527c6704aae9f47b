"""``steadygen serve``: compose the engine, telemetry, job store, queue and HTTP app, then run.

The server answers /healthz at once; the model loads and warms up in the background and
/readyz turns ready when it is done. Jobs accepted meanwhile wait in the queue.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from steadygen.analysis.baseline import Baselines
from steadygen.compose import build_diagnoser, build_engine, build_sampler
from steadygen.config import Settings
from steadygen.engine.engine import Engine
from steadygen.errors import ConfigError, SteadygenError
from steadygen.queue.events import EventHub
from steadygen.queue.local import LocalQueue
from steadygen.queue.runner import RunContext, shape_key
from steadygen.queue.store import JobStore
from steadygen.request import parse_size
from steadygen.server.metrics import Metrics
from steadygen.server.service import Service

log = logging.getLogger("steadygen.serve")


def warmup_sizes(settings: Settings, engine: Engine) -> list[tuple[int, int]]:
    if not settings.warmup_sizes:
        return [(engine.spec.default_side, engine.spec.default_side)]
    return [parse_size(s, field="warmup_sizes") for s in settings.warmup_sizes]


def rebuild_baselines(store: JobStore, engine: Engine, limit: int = 1000) -> Baselines:
    """Baselines persist with the jobs: replay the recent history into them."""
    baselines = Baselines()
    for job in store.recent_succeeded(limit):
        shape = (job.result or {}).get("shape")
        timings = (job.result or {}).get("timings")
        if shape and timings:
            key = shape_key(engine, job.request)
            if key.to_dict() == shape:
                baselines.add(key, timings, (job.result or {}).get("signals"))
    return baselines


class Server:
    """Everything one ``serve`` process runs, with a start and a stop."""

    def __init__(self, settings: Settings, engine: Engine | None = None):
        self.settings = settings
        self.engine = engine or build_engine(settings)
        settings.images_dir.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(settings.db_path)
        self.sampler = build_sampler(settings, self.engine.device)
        self.metrics = Metrics()
        self.baselines = rebuild_baselines(self.store, self.engine)
        self.hub = EventHub()
        self.metrics.registry.register(SubscriberCollector(self.hub))
        self.fault = InjectedFault.from_env()  # a test hook; None unless the variable is set
        self.diagnose: Callable[..., Any] | None = build_diagnoser(settings, self.sampler)
        self.contexts = [self._context(self.engine)]
        self.queue = LocalQueue(
            self.store,
            self.contexts,
            max_queue=settings.max_queue,
            hub=self.hub,
            recorder=self.metrics,
            log_prompts=settings.log_prompts,
        )
        self.state: dict[str, Any] = {"loaded": False, "warm": False, "accepting": True,
                                      "error": None}
        self.service = Service(
            queue=self.queue,
            model_name=self.engine.model_name,
            default_side=self.engine.spec.default_side,
            limits=settings.limits,
            images_dir=settings.images_dir,
            metrics=self.metrics,
            device=self.engine.device,
            sampler=self.sampler,
            state=lambda: dict(self.state),
        )
        self._starter: threading.Thread | None = None

    def _context(self, engine: Engine) -> RunContext:
        return RunContext(engine=engine, images_dir=self.settings.images_dir,
                          baselines=self.baselines, sampler=self.sampler, diagnose=self.diagnose)

    def start(self) -> None:
        self.sampler.start()
        self._starter = threading.Thread(target=self._load_and_start, name="steadygen-start",
                                         daemon=True)
        self._starter.start()

    def _load_and_start(self) -> None:
        try:
            load_s = self.engine.load()
            self.state["loaded"] = True
            sizes = warmup_sizes(self.settings, self.engine) if self.settings.warmup else []
            warm_s = self.engine.warmup(sizes)
            for _ in range(1, self.settings.concurrency):
                self.contexts.append(self._context(self.engine.fork()))
            if self.fault is not None:  # armed after warm-up, so warm-up cannot spend it
                for ctx in self.contexts:
                    ctx.engine.fault_hook = self.fault
                log.warning("test hook %s=%r is armed: jobs will fail on purpose",
                            TEST_FAULT_ENV, self.fault.spec)
            self.queue.start()
            self.state["warm"] = True
            log.info("ready: %s on %s (load %.1f s, warm-up %.1f s on %s)",
                     self.engine.model_name, self.engine.device, load_s, warm_s, sizes)
        except (SteadygenError, OSError) as exc:
            self.state["error"] = str(exc)
            log.error("the model could not be loaded: %s", exc)

    def drain(self) -> None:
        """On SIGTERM, at once: no new submissions, no new jobs started."""
        self.state["accepting"] = False
        self.queue.drain()

    def stop(self) -> None:
        self.state["accepting"] = False
        self.queue.stop(self.settings.shutdown_grace_s)
        self.sampler.stop()
        self.store.close()


class RemoteServer:
    """``serve --queue redis://...``: the HTTP API only. Jobs go to a Redis stream and GPU
    workers (``steadygen worker``) run them; this process loads no model. The served model
    is ``settings.model`` when set, else the one the live workers report."""

    def __init__(self, settings: Settings):
        from steadygen.engine.models import TURBO, resolve_model
        from steadygen.queue.redis_queue import RedisQueue
        from steadygen.queue.redis_telemetry import WorkerTelemetry

        self.settings = settings
        settings.images_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = Metrics()
        self.queue = RedisQueue.from_settings(settings, recorder=self.metrics)
        spec = resolve_model(settings.model or TURBO)
        self.state: dict[str, Any] = {"accepting": True, "error": None}
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
        self.metrics.registry.register(StreamCollector(self.queue))
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def queue_description(self) -> str:
        from steadygen.queue.redis_streams import redact

        return (f"Redis at {redact(self.queue.url)} (stream {self.queue.stream}, "
                f"group {self.queue.group})")

    def _state(self) -> dict[str, Any]:
        up = self.queue.healthy(10.0)  # the event reader hears from Redis every second
        return {**self.state, "loaded": up, "warm": up, "accepting": self.queue.accepting,
                "error": self.state["error"] if up else "the Redis job queue is unreachable"}

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


TEST_FAULT_ENV = "STEADYGEN_TEST_FAULT"


class InjectedFault:
    """A test hook, not a feature: ``STEADYGEN_TEST_FAULT="KIND@WHERE[*COUNT]"`` makes the
    engine fail at WHERE (start, encode, step:N, decode, save: ``Engine.fault_hook``'s
    points) in the first COUNT generations that reach it after warm-up (default 1).

    KIND ``oom`` raises MemoryError("CUDA out of memory (injected)"), which the engine
    reports as OutOfMemory, while holding 128 MiB of written memory, as a generation that
    ran out of memory part-way would: if anything kept the failure alive, the server's
    memory would show it. KIND ``error`` raises RuntimeError("injected fault").
    Example: ``STEADYGEN_TEST_FAULT=oom@step:50`` (tests/reliability/test_faults.py).
    """

    KINDS = ("oom", "error")
    BALLAST_BYTES = 128 << 20

    def __init__(self, spec: str):
        self.spec = spec
        kind, _, rest = spec.partition("@")
        where, _, count = rest.partition("*")
        if kind not in self.KINDS or not where or (count and not count.isdigit()):
            raise ConfigError(
                f"{TEST_FAULT_ENV} must look like KIND@WHERE[*COUNT] with KIND one of "
                f"{', '.join(self.KINDS)}, e.g. oom@step:2 (got {spec!r})"
            )
        self.kind, self.where = kind, where
        self.remaining = int(count) if count else 1
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> InjectedFault | None:
        spec = os.environ.get(TEST_FAULT_ENV)
        return cls(spec) if spec else None

    def __call__(self, where: str) -> None:
        if where != self.where:
            return
        with self._lock:
            if self.remaining <= 0:
                return
            self.remaining -= 1
        if self.kind == "error":
            raise RuntimeError("injected fault")
        ballast = b"\x01" * self.BALLAST_BYTES  # held by this frame, so by the traceback
        raise MemoryError(f"CUDA out of memory (injected; {len(ballast)} bytes held)")


class SubscriberCollector(Collector):
    """Open event subscriptions: SSE streams and synchronous requests waiting for a job.
    It returns to its idle value when clients go away, or subscriptions leak."""

    def __init__(self, hub: EventHub):
        self.hub = hub

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        family = GaugeMetricFamily(
            "steadygen_event_subscribers",
            "Open job-event subscriptions (SSE streams, requests waiting for a job).",
        )
        family.add_metric([], float(self.hub.subscriber_count))
        yield family


class StreamCollector(Collector):
    """The job stream as the API's /metrics shows it (and KEDA scales on)."""

    def __init__(self, queue: Any):
        self.queue = queue

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        try:
            stats = self.queue.stats()
        except SteadygenError:
            return
        for name, doc, value in (
            ("steadygen_queue_lag", "Stream entries not yet delivered to any worker "
             "(XINFO GROUPS lag).", stats.lag),
            ("steadygen_queue_pending", "Jobs delivered to a worker and not yet "
             "acknowledged (XPENDING).", stats.pending),
            ("steadygen_queue_stream_length", "Unacknowledged entries in the job stream "
             "(XLEN).", stats.length),
            ("steadygen_workers", "Workers heard from in the last 10 s.", stats.workers),
        ):
            if value is not None:
                family = GaugeMetricFamily(name, doc)
                family.add_metric([], float(value))
                yield family


def run_serve(settings: Settings) -> int:
    import uvicorn

    from steadygen.server.app import build_app

    server: Server | RemoteServer = (
        RemoteServer(settings) if settings.queue_url else Server(settings)
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
    if isinstance(server, RemoteServer):
        print(f"steadygen: jobs go to {server.queue_description()}; run `steadygen worker "
              "--queue ...` on each GPU", flush=True)
    else:
        print(f"steadygen: model {server.engine.model_name} on {server.engine.device}"
              + (" (images are noise: random weights)" if server.engine.spec.noise_only else ""),
              flush=True)
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
