"""The job queue in Redis Streams, for many GPU workers behind one or more API processes:
the ``JobQueue`` contract with the API side (api_side.py) and the worker side
(worker_side.py) over one connection (connection.py, which has the key layout).

Events reach this process's subscribers from the all-jobs event stream (one reader thread,
XREAD BLOCK); a job's own event stream answers resumes (Last-Event-ID) across restarts.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from steadygen.backoff import Backoff
from steadygen.queue.contract import NullRecorder, Recorder
from steadygen.queue.events import EventHub
from steadygen.queue.job import JobEvent
from steadygen.queue.redis.api_side import ApiSide
from steadygen.queue.redis.connection import UNREACHABLE, RedisStreams, redact
from steadygen.queue.redis.worker_side import WorkerSide

log = logging.getLogger("steadygen.queue.redis")


class RedisQueue(ApiSide, WorkerSide):
    def __init__(
        self,
        url: str,
        *,
        stream: str,
        group: str,
        visibility_timeout_s: float,
        max_attempts: int,
        max_queue: int,
        hub: EventHub | None = None,
        recorder: Recorder | None = None,
        connect_attempts: int = 6,
        retry_attempts: int = 3,
    ):
        self.conn = RedisStreams(url, stream=stream, group=group,
                                 connect_attempts=connect_attempts,
                                 retry_attempts=retry_attempts)
        self.url, self.stream, self.group = url, stream, group
        self.visibility_timeout_s = visibility_timeout_s
        self.max_attempts = max_attempts
        self.max_queue = max_queue
        self.hub = hub or EventHub()
        self.recorder = recorder or NullRecorder()
        self._accepting = True
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self._cache: dict[str, tuple[float, Any]] = {}
        self._cursor = "0-0"  # XAUTOCLAIM's
        self._last_reclaim = 0.0

    @classmethod
    def from_settings(cls, settings: Any, **kwargs: Any) -> RedisQueue:
        return cls(
            settings.queue_url, stream=settings.stream, group=settings.group,
            visibility_timeout_s=settings.visibility_timeout_s,
            max_attempts=settings.max_attempts, max_queue=settings.max_queue, **kwargs,
        )

    def describe(self) -> str:
        return f"Redis at {redact(self.url)} (stream {self.stream}, group {self.group})"

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start handing the all-jobs event stream to this process's subscribers."""
        if self._reader is None:
            self._stop.clear()
            self._reader = threading.Thread(target=self._read_events, daemon=True,
                                            name="steadygen-redis-events")
            self._reader.start()

    def stop_accepting(self) -> None:
        self._accepting = False

    @property
    def accepting(self) -> bool:
        return self._accepting

    def stop(self, grace_s: float = 5.0) -> None:
        self._accepting = False
        self._stop.set()
        if self._reader is not None:
            self._reader.join(min(grace_s, 3.0))

    def close(self) -> None:
        self.stop()
        self.conn.close()

    def healthy(self, within_s: float = 10.0) -> bool:
        return self.conn.healthy(within_s)

    def _read_events(self) -> None:
        """XREAD BLOCK on the all-jobs event stream, each event into the EventHub (which
        hands it to asyncio subscribers). Reconnects with backoff, logging each attempt."""
        reader = self.conn.open_reader()
        last = ""
        backoff = Backoff(0.5, 30.0)
        key = self._key("events")
        while not self._stop.is_set():
            try:
                if not last:  # start after the newest event: an explicit id, never "$",
                    newest = reader.xrevrange(key, count=1)  # so nothing falls between reads
                    last = newest[0][0] if newest else "0-0"
                got = reader.xread({key: last}, count=500, block=1000)
            except UNREACHABLE as exc:
                delay = backoff.next_s()
                log.warning("lost the event stream from Redis at %s (attempt %d): %s; "
                            "retrying in %.1f s", redact(self.url), backoff.failures, exc,
                            delay)
                self._stop.wait(delay)
                continue
            if backoff.failures:
                log.warning("event stream from Redis at %s is back", redact(self.url))
            backoff.reset()
            self.conn.last_ok_mono = time.monotonic()
            for _stream, entries in got or []:
                for entry_id, f in entries:
                    last = entry_id
                    self.hub.publish(JobEvent(f["job"], int(f["a"]), int(f["n"]), f["type"],
                                              json.loads(f["data"])))
        reader.close()
