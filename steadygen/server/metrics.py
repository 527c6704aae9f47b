"""Prometheus metrics, prefix ``steadygen_``, base units, low-cardinality labels.

Durations are observed once, when a job finishes (the queue calls ``job_finished``).
Gauges that describe the present (queue depth, jobs by state, telemetry) are read at
scrape time by a collector, so they are never stale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from steadygen.analysis.causes import CAUSE_KINDS
from steadygen.errors import SteadygenError
from steadygen.queue.contract import QueueStats
from steadygen.queue.events import EventHub
from steadygen.queue.job import Job, JobState

# Suits 0.05 s to 120 s, with a few smaller buckets for CPU-sized steps.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
PHASES = (
    "load", "warmup", "encode", "prepare", "steps", "decode", "save", "memory", "offload",
    "callbacks", "other",
)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """The server's recorder: histograms and counters fed by finished jobs."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.request = Histogram(
            "steadygen_request_duration_seconds",
            "Accepted to finished: queue wait plus service.", buckets=BUCKETS, registry=r,
        )
        self.queue_wait = Histogram(
            "steadygen_queue_wait_seconds", "Accepted to started.", buckets=BUCKETS, registry=r
        )
        self.service = Histogram(
            "steadygen_service_duration_seconds",
            "Started to finished, inside the engine.", buckets=BUCKETS, registry=r,
        )
        self.phase = Histogram(
            "steadygen_phase_duration_seconds", "Seconds per phase of a job.",
            ["phase"], buckets=BUCKETS, registry=r,
        )
        self.step = Histogram(
            "steadygen_step_duration_seconds", "Seconds per denoising step.",
            buckets=BUCKETS, registry=r,
        )
        self.finished = Counter(
            "steadygen_jobs_finished_total", "Jobs that ended, by final state.", ["state"],
            registry=r,
        )
        self.submitted = Counter(
            "steadygen_jobs_submitted_total", "Jobs accepted into the queue.", registry=r
        )
        self.rejected = Counter(
            "steadygen_jobs_rejected_total", "Submissions refused because the queue was full.",
            registry=r,
        )
        self.slowdown = Counter(
            "steadygen_slowdown_seconds_total",
            "Seconds of slowdown attributed to each cause, over all jobs.", ["cause"],
            registry=r,
        )
        for cause in CAUSE_KINDS:  # every label value from the start (0 until it happens)
            self.slowdown.labels(cause=cause)
        self.slow_jobs = Counter(
            "steadygen_slow_jobs_total", "Jobs slower than expected by more than the margin.",
            registry=r,
        )

    def job_submitted(self, job: Job) -> None:
        self.submitted.inc()

    def job_rejected(self) -> None:
        self.rejected.inc()

    def job_finished(self, job: Job) -> None:
        self.finished.labels(state=job.state.value).inc()
        if job.state is not JobState.SUCCEEDED or not job.result:
            return
        t = job.result.get("timings") or {}
        total = float(t.get("total_s", 0.0))
        wait = float(t.get("queue_wait_s", 0.0))
        self.request.observe(wait + total)
        self.queue_wait.observe(wait)
        self.service.observe(total)
        for phase in PHASES:
            key = "denoise_s" if phase == "steps" else f"{phase}_s"
            if key in t:
                self.phase.labels(phase=phase).observe(float(t[key]))
        for s in t.get("steps_s", []):
            self.step.observe(float(s))
        diagnosis = job.result.get("diagnosis") or {}
        for cause in diagnosis.get("causes", []):
            self.slowdown.labels(cause=cause["kind"]).inc(max(0.0, float(cause["seconds"])))
        if diagnosis.get("slow"):
            self.slow_jobs.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class StateCollector(Collector):
    """Gauges read at scrape time: queue depth, jobs by state, model state, telemetry."""

    def __init__(
        self,
        counts: Callable[[], dict[str, int]],
        model_state: Callable[[], dict[str, Any]],
        gauges: Callable[[], Iterable[tuple[str, dict[str, str], float]]] | None = None,
        alert_counts: Callable[[], dict[str, int]] | None = None,
    ):
        self._counts = counts
        self._model_state = model_state
        self._gauges = gauges
        self._alert_counts = alert_counts

    def describe(self) -> Iterable[Any]:
        return []  # values are read at collect time only

    def collect(self) -> Iterable[Any]:
        counts = self._counts()
        depth = GaugeMetricFamily("steadygen_queue_depth", "Jobs waiting to start.")
        depth.add_metric([], counts.get("queued", 0))
        yield depth
        jobs = GaugeMetricFamily("steadygen_jobs", "Jobs in the store, by state.", labels=["state"])
        for state in JobState:
            jobs.add_metric([state.value], counts.get(state.value, 0))
        yield jobs
        state = self._model_state()
        loaded = GaugeMetricFamily("steadygen_model_loaded", "1 when the model is loaded.")
        loaded.add_metric([], 1.0 if state.get("loaded") else 0.0)
        yield loaded
        warm = GaugeMetricFamily("steadygen_model_warm", "1 when warm-up has finished.")
        warm.add_metric([], 1.0 if state.get("warm") else 0.0)
        yield warm
        info = InfoMetricFamily("steadygen_build", "Version, model and device.")
        info.add_metric([], {k: str(state.get(k, "")) for k in ("version", "model", "device")})
        yield info
        if self._gauges is not None:
            yield from _gauge_families(self._gauges())
        if self._alert_counts is not None:
            alerts = GaugeMetricFamily(
                "steadygen_alert_episodes", "Alert episodes since start, by kind.", labels=["kind"]
            )
            for kind, n in sorted(self._alert_counts().items()):
                alerts.add_metric([kind], n)
            yield alerts


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


class QueueCollector(Collector):
    """The queue's workers, and in Redis mode its stream (what KEDA scales on)."""

    def __init__(self, stats: Callable[[], QueueStats]):
        self.stats = stats

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        try:
            stats = self.stats()
        except SteadygenError:
            return
        for name, doc, value in (
            ("steadygen_queue_lag", "Stream entries not yet delivered to any worker "
             "(XINFO GROUPS lag; Redis mode).", stats.lag),
            ("steadygen_queue_pending", "Jobs delivered to a worker and not yet "
             "acknowledged (XPENDING; Redis mode).", stats.pending),
            ("steadygen_queue_stream_length", "Unacknowledged entries in the job stream "
             "(XLEN; Redis mode).", stats.stream_length),
            ("steadygen_workers", "Workers taking jobs (threads in one process; in Redis "
             "mode, workers heard from in the last 10 s).", stats.workers),
        ):
            if value is not None:
                family = GaugeMetricFamily(name, doc)
                family.add_metric([], float(value))
                yield family


def _gauge_families(
    values: Iterable[tuple[str, dict[str, str], float]],
) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
    """Telemetry readings as metric families; a name ending in _total is a counter."""
    families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
    label_names: dict[str, list[str]] = {}
    for suffix, labels, value in values:
        if value is None:
            continue
        name = "steadygen_" + suffix
        if name not in families:
            label_names[name] = sorted(labels)
            doc = f"Telemetry: {suffix.replace('_', ' ')}."
            if name.endswith("_total"):
                families[name] = CounterMetricFamily(
                    name[: -len("_total")], doc, labels=label_names[name]
                )
            else:
                families[name] = GaugeMetricFamily(name, doc, labels=label_names[name])
        if sorted(labels) != label_names[name]:
            continue
        families[name].add_metric([labels[k] for k in label_names[name]], float(value))
    return families.values()
