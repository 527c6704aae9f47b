"""``steadygen serve``: compose the engine, telemetry, job store, queue and HTTP app, then run.

The server answers /healthz at once; the model loads and warms up in the background and
/readyz turns ready when it is done. Jobs accepted meanwhile wait in the queue.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from steadygen.analysis.baseline import Baselines
from steadygen.config import Settings
from steadygen.engine.engine import Engine
from steadygen.errors import SteadygenError
from steadygen.generate import build_engine
from steadygen.queue.events import EventHub
from steadygen.queue.local import LocalQueue
from steadygen.queue.runner import RunContext, shape_key
from steadygen.queue.store import JobStore
from steadygen.request import parse_size
from steadygen.server.metrics import Metrics
from steadygen.server.service import Service

log = logging.getLogger("steadygen.serve")


def build_sampler(settings: Settings, device: str) -> Any:
    from steadygen.telemetry.alerts import AlertThresholds, Alerts
    from steadygen.telemetry.sampler import Sampler

    alerts = Alerts(
        AlertThresholds(temp_c=settings.temp_alert_c, fragmentation=settings.fragmentation_alert)
    )
    index = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
    interval = 1.0 / settings.sampler_hz if settings.sampler_hz > 0 else 0.0
    return Sampler(
        interval_s=interval,
        gpu_indices=[index] if device.startswith("cuda") else None,
        alerts=alerts,
        enable_gpu=True,
    )


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
        self.diagnose: Callable[..., Any] | None = _attribution(settings, self.sampler)
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
            self.queue.start()
            self.state["warm"] = True
            log.info("ready: %s on %s (load %.1f s, warm-up %.1f s on %s)",
                     self.engine.model_name, self.engine.device, load_s, warm_s, sizes)
        except (SteadygenError, OSError) as exc:
            self.state["error"] = str(exc)
            log.error("the model could not be loaded: %s", exc)

    def stop(self) -> None:
        self.state["accepting"] = False
        self.queue.stop(self.settings.shutdown_grace_s)
        self.sampler.stop()
        self.store.close()


def _attribution(settings: Settings, sampler: Any = None) -> Callable[..., Any]:
    from steadygen.analysis.attribute import make_diagnoser

    return make_diagnoser(settings.slow_margin, sampler=sampler, on_slow=log.warning)


def run_serve(settings: Settings) -> int:
    import uvicorn

    from steadygen.server.app import build_app

    server = Server(settings)
    app = build_app(settings, server.service)

    @asynccontextmanager
    async def lifespan(_: Any):
        server.start()
        try:
            yield
        finally:
            server.stop()

    app.router.lifespan_context = lifespan
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
    uvicorn.Server(config).run()
    return 0

