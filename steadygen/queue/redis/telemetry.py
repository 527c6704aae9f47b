"""GPU and host telemetry from the workers, for the API processes (which have no GPU).

Each worker SETs its latest sample about once a second under ``P telemetry:<worker>``,
expiring after ``TELEMETRY_TTL_S`` (a worker that stops goes away by itself). In Redis mode
the API's Service gets a ``WorkerTelemetry`` as its sampler: /v1/telemetry and the dashboard
show the freshest worker sample, with a ``worker`` field naming the worker.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from steadygen.errors import QueueUnavailable
from steadygen.queue.redis.connection import RedisStreams

if TYPE_CHECKING:
    from steadygen.queue.redis.queue import RedisQueue

log = logging.getLogger("steadygen.queue.redis")

TELEMETRY_TTL_S = 10
PUBLISH_EVERY_S = 1.0


class TelemetryPublisher(threading.Thread):
    """A worker's thread: its sampler's latest sample into Redis, at most once a second,
    one try each (telemetry is best effort)."""

    def __init__(self, conn: RedisStreams, consumer: str, sampler: Any,
                 stopping: threading.Event, every_s: float = PUBLISH_EVERY_S):
        super().__init__(name="steadygen-telemetry", daemon=True)
        self.conn, self.consumer, self.sampler = conn, consumer, sampler
        self.stopping, self.every_s = stopping, every_s
        self._last_t = -1.0

    def run(self) -> None:
        while not self.stopping.wait(self.every_s):
            try:
                self.publish_once()
            except QueueUnavailable as exc:
                log.debug("telemetry not sent: %s", exc)

    def publish_once(self) -> bool:
        sample = self.sampler.latest()
        if sample is None or sample.t_mono == self._last_t:
            return False
        data = sample.to_dict()
        if data["processes"] is None:  # process lists are read about once a second
            procs = self.sampler.latest_processes()
            data["processes"] = None if procs is None else [p.to_dict() for p in procs]
        payload = json.dumps({"worker": self.consumer,
                              "gpu_backend": self.sampler.gpu_backend_name, "sample": data})
        key = self.conn.key("telemetry", self.consumer)
        self.conn.call("publish telemetry",
                       lambda: self.conn.client.set(key, payload, ex=TELEMETRY_TTL_S),
                       attempts=1)
        self._last_t = sample.t_mono
        return True


class RemoteSample:
    """A worker's sample as the routes use a Sample: ``to_dict()``."""

    def __init__(self, data: dict[str, Any]):
        self.data = data

    def to_dict(self) -> dict[str, Any]:
        return self.data


class WorkerTelemetry:
    """The API side: looks like the Sampler that routes_telemetry and the metrics collector
    read (``latest()``, ``gpu_backend_name``, ``gauges()``), fed by the workers."""

    def __init__(self, queue: RedisQueue, cache_s: float = 0.5):
        self.queue, self.cache_s = queue, cache_s
        self._cached: tuple[float, dict[str, Any] | None] = (float("-inf"), None)

    def _freshest(self) -> dict[str, Any] | None:
        at, payload = self._cached
        if time.monotonic() - at < self.cache_s:
            return payload
        conn = self.queue.conn
        try:
            keys = [conn.key("telemetry", w.consumer) for w in self.queue.workers()]
            raw = conn.call("read telemetry", lambda: conn.client.mget(keys)) if keys else []
        except QueueUnavailable:  # no sample, like a process without a sampler
            raw = []
        found = [json.loads(r) for r in raw if r]
        payload = max(found, key=lambda p: p["sample"].get("t_wall", 0.0), default=None)
        self._cached = (time.monotonic(), payload)
        return payload

    def latest(self) -> RemoteSample | None:
        payload = self._freshest()
        if payload is None:
            return None
        return RemoteSample({**payload["sample"], "worker": payload["worker"]})

    @property
    def gpu_backend_name(self) -> str:
        payload = self._freshest()
        return str(payload["gpu_backend"]) if payload is not None else "none"

    def gauges(self) -> list[tuple[str, dict[str, str], float]]:
        """None: each worker exports its own GPU and host gauges on its metrics port
        (scraped too); the API repeating one worker's would count them twice and hop
        between workers."""
        return []
