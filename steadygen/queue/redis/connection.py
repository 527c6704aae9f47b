"""The connection to Redis for the scale-out queue (``serve --queue redis://...`` and
``steadygen worker``), and the key layout both sides share. The only module that imports
redis: the others get a ``RedisStreams`` (and, to catch them, the exception classes below).

Layout (every key starts with the stream name, ``P = "<stream>:"``)::

    <stream>              Stream of {job: id}; consumer group <group>. One live entry per job.
    P job:<id>            Hash: the Job's fields (request and result as JSON), event counters,
                          live progress (step, steps, eta_s) and the id of its stream entry.
    P events:<id>         Stream of that job's events (a, n, type, data); MAXLEN ~1000.
    P events              Stream of every job's events, for the API processes' EventHub.
    P state:<state>       Sorted sets of job ids per state (score: arrival; for queued:
                          priority, then arrival), for counts, lists and positions.
    P entries             Hash: stream entry id -> the job it currently stands for.
    P index               Sorted set of every job id by arrival (GET /v1/jobs).
    P seq                 Arrival counter.
    P workers, P seen     Live workers (info JSON; last heartbeat, Redis clock).
    P service_s           Recent service seconds per request shape (JSON lists, for ETAs),
                          kept by workers (queue/eta.py).
    P telemetry:<worker>  That worker's latest telemetry sample (JSON, expires; see
                          telemetry.py).

The scripts (scripts.py) build key names from the prefix: standalone Redis (or Sentinel),
not Cluster. The API side is api_side.py, the worker side worker_side.py, joined in queue.py.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from steadygen.backoff import Backoff, retry
from steadygen.errors import QueueUnavailable
from steadygen.queue.job import Job, JobState
from steadygen.queue.redis.scripts import SCRIPTS
from steadygen.request import GenerationRequest

__all__ = [
    "HISTORY_TTL_S", "MIN_VERSION", "UNREACHABLE", "RedisConnectionError", "RedisStreams",
    "RedisTimeoutError", "ResponseError", "job_from_hash", "redact",
]

log = logging.getLogger("steadygen.queue.redis")

T = TypeVar("T")
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
HISTORY_TTL_S = 7 * 86400  # finished jobs and their events are kept this long
MIN_VERSION = (6, 2)  # XAUTOCLAIM; 7.0 for the group lag KEDA scales on


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    user = f"{parts.username}:***@" if parts.username else ":***@"
    netloc = user + host + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def open_client(url: str, **options: Any) -> Any:
    """A client with decoded (str) replies and our timeouts. Any: redis-py types every
    reply as a sync/async union."""
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=10.0,
                                socket_connect_timeout=5.0, **options)


class RedisStreams:
    """One client for one stream and consumer group: reaching Redis (with backoff), the
    registered scripts, key names, and every operation retried through ``call``."""

    def __init__(
        self,
        url: str,
        *,
        stream: str,
        group: str,
        connect_attempts: int = 6,
        retry_attempts: int = 3,
    ):
        self.url = url
        self.stream = stream
        self.group = group
        self.prefix = stream + ":"
        self.retry_attempts = retry_attempts
        self.client: Any = open_client(url, health_check_interval=15)
        self.scripts = {name: self.client.register_script(source)
                        for name, source in SCRIPTS.items()}
        self.last_ok_mono = 0.0  # the last time Redis answered (readiness)
        self.connect(connect_attempts)

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def connect(self, attempts: int) -> None:
        """Reach Redis and make sure the consumer group exists; retries with exponential
        backoff and a log line per attempt, then raises QueueUnavailable with the fix."""

        def reach() -> dict[str, Any]:
            info = self.client.info("server")
            self.ensure_group()
            return info

        try:
            info = retry(reach, what=f"reaching Redis at {redact(self.url)}", attempts=attempts,
                         retry_on=UNREACHABLE, log=log, backoff=Backoff(0.5, 30.0))
        except UNREACHABLE as exc:
            raise QueueUnavailable(
                f"cannot reach Redis at {redact(self.url)} after {attempts} attempts "
                f"({exc}); start Redis there, or point --queue / STEADYGEN_QUEUE_URL "
                "at a running one"
            ) from exc
        version = tuple(int(x) for x in str(info.get("redis_version", "0.0")).split(".")[:2])
        if version < MIN_VERSION:
            raise QueueUnavailable(
                f"Redis at {redact(self.url)} is version {info.get('redis_version')}; "
                "steadygen needs 6.2 or later (7 or later for KEDA's lag-based scaling)"
            )
        try:
            appendonly = self.client.config_get("appendonly").get("appendonly")
        except ResponseError:  # managed services often refuse CONFIG
            appendonly = None
        if appendonly == "no":
            log.warning("Redis at %s runs without appendonly: accepted jobs are lost if it "
                        "restarts; set 'appendonly yes'", redact(self.url))
        self.last_ok_mono = time.monotonic()

    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def call(self, what: str, fn: Callable[[], T], attempts: int | None = None) -> T:
        """One Redis operation, retried a few times with backoff (each attempt logged);
        QueueUnavailable when Redis stays unreachable. Every script is safe to repeat."""

        def once() -> T:
            try:
                out = fn()
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # Redis lost its data (no persistence?): set the group up again
                log.warning("the consumer group %s is gone from Redis at %s; creating it "
                            "again", self.group, redact(self.url))
                self.ensure_group()
                out = fn()
            self.last_ok_mono = time.monotonic()
            return out

        try:
            return retry(once, what=f"Redis at {redact(self.url)} ({what})",
                         attempts=attempts or self.retry_attempts, retry_on=UNREACHABLE,
                         log=log, backoff=Backoff(0.2, 5.0))
        except UNREACHABLE as exc:
            raise QueueUnavailable(
                f"the job queue (Redis at {redact(self.url)}) cannot be reached to {what}: "
                f"{exc}"
            ) from exc

    def run_script(self, name: str, args: list[Any], what: str,
                   attempts: int | None = None) -> Any:
        """One of scripts.SCRIPTS, through ``call``."""
        script = self.scripts[name]
        return self.call(what, lambda: script(args=args), attempts)

    def open_reader(self) -> Any:
        """A second client, for a thread that blocks on XREAD (not shared with ``call``)."""
        return open_client(self.url)

    def healthy(self, within_s: float = 10.0) -> bool:
        return time.monotonic() - self.last_ok_mono < within_s

    def close(self) -> None:
        self.client.close()


def job_from_hash(raw: dict[str, str]) -> Job:
    """A Job from its ``P job:<id>`` hash."""
    def num(name: str) -> float | None:
        value = raw.get(name)
        return float(value) if value not in (None, "") else None

    return Job(
        id=raw["id"],
        request=GenerationRequest.from_dict(json.loads(raw["request"])),
        state=JobState(raw["state"]),
        priority=int(raw.get("priority", 0)),
        created_at=float(raw["created_at"]),
        started_at=num("started_at"),
        finished_at=num("finished_at"),
        attempts=int(raw.get("attempts", 0)),
        error=raw.get("error") or None,
        cancel_requested=raw.get("cancel_requested") == "1",
        worker=raw.get("worker") or None,
        result=json.loads(raw["result"]) if raw.get("result") else None,
        seq=int(raw.get("seq", 0)),
    )
