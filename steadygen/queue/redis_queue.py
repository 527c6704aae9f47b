"""The job queue in Redis as the HTTP routes see it: RedisQueue has LocalQueue's methods
(submit, get, list, cancel, counts, progress, ETAs, events), for many GPU workers behind one
or more API processes. The workers' side of the same stream is redis_worker.py; the key
layout and the connection are redis_streams.py.

Events reach this process's subscribers from the all-jobs event stream (one reader thread,
XREAD BLOCK); a job's own event stream answers resumes (Last-Event-ID) across API restarts.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from steadygen.errors import JobNotFound, QueueFull
from steadygen.queue.events import EventHub, Subscription
from steadygen.queue.job import Job, JobEvent, JobState, new_job_id
from steadygen.queue.local import Progress, Recorder
from steadygen.queue.redis_streams import (
    HISTORY_TTL_S,
    UNREACHABLE,
    RedisStreams,
    job_from_hash,
    redact,
    shape_label,
)
from steadygen.request import GenerationRequest

log = logging.getLogger("steadygen.queue.redis")

T = TypeVar("T")
WORKER_FRESH_S = 10.0  # a worker that has not said hello for this long is gone


@dataclass(frozen=True)
class StreamStats:
    """The stream as the API's /metrics and KEDA see it."""

    length: int  # XLEN: entries not yet acknowledged (ours are deleted once acknowledged)
    lag: int | None  # XINFO GROUPS lag: entries not yet delivered to any worker
    pending: int  # delivered and not yet acknowledged: jobs being run
    consumers: int
    workers: int  # workers that said hello in the last WORKER_FRESH_S seconds


@dataclass(frozen=True)
class WorkerInfo:
    consumer: str
    info: dict[str, Any]
    seen_s_ago: float


def rough_service_s(req: GenerationRequest) -> float:
    """A first guess before any job of this shape has run (as the local queue guesses)."""
    return 0.05 * req.steps * req.n * (req.width * req.height) / (256 * 256)


class RedisQueue:
    """The queue the HTTP routes see (the same methods as LocalQueue). ``visibility_timeout_s``
    and ``max_attempts`` are the stream's settings, read by the worker side
    (``WorkerQueue.from_queue``). Signatures say ``builtins.list`` because the method
    ``list`` hides the builtin in the class body."""

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
        self.recorder = recorder or Recorder()
        self._accepting = True
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self._cache: dict[str, tuple[float, Any]] = {}

    @classmethod
    def from_settings(cls, settings: Any, **kwargs: Any) -> RedisQueue:
        return cls(
            settings.queue_url, stream=settings.stream, group=settings.group,
            visibility_timeout_s=settings.visibility_timeout_s,
            max_attempts=settings.max_attempts, max_queue=settings.max_queue, **kwargs,
        )

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        return self.conn.call(what, fn)

    def _key(self, *parts: str) -> str:
        return self.conn.key(*parts)

    @property
    def _r(self) -> Any:
        return self.conn.client

    def _cached(self, name: str, ttl_s: float, fn: Callable[[], T]) -> T:
        hit = self._cache.get(name)
        if hit is not None and time.monotonic() - hit[0] < ttl_s:
            return hit[1]
        value = fn()
        self._cache[name] = (time.monotonic(), value)
        return value

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

    def stop(self, grace_s: float = 5.0) -> bool:
        self._accepting = False
        self._stop.set()
        if self._reader is not None:
            self._reader.join(min(grace_s, 3.0))
        return True

    def close(self) -> None:
        self.stop()
        self.conn.close()

    def healthy(self, within_s: float = 10.0) -> bool:
        return self.conn.healthy(within_s)

    def _read_events(self) -> None:
        """XREAD BLOCK on the all-jobs event stream, each event into the EventHub (which
        hands it to asyncio subscribers). Reconnects with backoff, logging each attempt."""
        reader = self.conn.open_reader()
        last, delay, failures = "", 0.5, 0
        key = self._key("events")
        while not self._stop.is_set():
            try:
                if not last:  # start after the newest event: an explicit id, never "$",
                    newest = reader.xrevrange(key, count=1)  # so nothing falls between reads
                    last = newest[0][0] if newest else "0-0"
                got = reader.xread({key: last}, count=500, block=1000)
            except UNREACHABLE as exc:
                failures += 1
                log.warning("lost the event stream from Redis at %s (attempt %d): %s; "
                            "retrying in %.1f s", redact(self.url), failures, exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)
                continue
            if failures:
                log.warning("event stream from Redis at %s is back", redact(self.url))
            delay, failures = 0.5, 0
            self.conn.last_ok_mono = time.monotonic()
            for _stream, entries in got or []:
                for entry_id, f in entries:
                    last = entry_id
                    self.hub.publish(JobEvent(f["job"], int(f["a"]), int(f["n"]), f["type"],
                                              json.loads(f["data"])))
        reader.close()

    # -- jobs --------------------------------------------------------------------------

    def submit(self, req: GenerationRequest, priority: int = 0) -> Job:
        if not self._accepting:
            raise QueueFull(self.max_queue, retry_after_s=30.0)
        job = Job(id=new_job_id(), request=req, priority=priority)
        out = self.conn.run_script("submit", [
            self.conn.prefix, self.stream, job.id, json.dumps(req.to_dict()), priority,
            self.max_queue], "submit a job")
        if out[0] == "full":
            self.recorder.job_rejected()
            raise QueueFull(self.max_queue, retry_after_s=max(1.0, self._drain_s()))
        job = self.get(job.id)
        log.info("job %s queued: %s, %d steps, n=%d", job.id, req.size, req.steps, req.n)
        self.recorder.job_submitted(job)
        return job

    def get(self, job_id: str) -> Job:
        raw = self._call("read a job", lambda: self._r.hgetall(self._key("job", job_id)))
        if not raw:
            raise JobNotFound(job_id)
        return job_from_hash(raw)

    def list(self, limit: int = 50, state: JobState | None = None) -> builtins.list[Job]:
        key = self._key("index") if state is None else self._key("state", state.value)
        ids = self._call("list jobs", lambda: self._r.zrevrange(key, 0, limit - 1))
        return self._jobs(ids, key)

    def _jobs(self, ids: builtins.list[str], index_key: str | None = None) -> builtins.list[Job]:
        def read() -> list[dict[str, str]]:
            pipe = self._r.pipeline(transaction=False)
            for job_id in ids:
                pipe.hgetall(self._key("job", job_id))
            return pipe.execute()

        jobs, gone = [], []
        for job_id, raw in zip(ids, self._call("read jobs", read), strict=True):
            if raw:
                jobs.append(job_from_hash(raw))
            else:
                gone.append(job_id)
        if gone and index_key:  # expired history: drop it from the index as well
            self._call("tidy the index", lambda: self._r.zrem(index_key, *gone))
        return jobs

    def recent_succeeded(self, limit: int) -> builtins.list[Job]:
        """Oldest first, like JobStore.recent_succeeded (to rebuild baselines)."""
        key = self._key("state", JobState.SUCCEEDED.value)
        ids = self._call("list jobs", lambda: self._r.zrevrange(key, 0, limit - 1))
        return list(reversed(self._jobs(ids, key)))

    def cancel(self, job_id: str) -> Job:
        out = self.conn.run_script("cancel", [self.conn.prefix, job_id, HISTORY_TTL_S],
                                   "cancel a job")
        if out == "missing":
            raise JobNotFound(job_id)
        return self.get(job_id)

    def depth(self) -> int:
        key = self._key("state", JobState.QUEUED.value)
        return int(self._call("count queued jobs", lambda: self._r.zcard(key)))

    def counts(self) -> dict[str, int]:
        def read() -> list[int]:
            pipe = self._r.pipeline(transaction=False)
            for s in JobState:
                pipe.zcard(self._key("state", s.value))
            return pipe.execute()

        return {s.value: int(n) for s, n in zip(JobState, self._call("count jobs", read),
                                                strict=True)}

    # -- progress and ETAs -------------------------------------------------------------

    def running(self) -> builtins.list[Progress]:
        return self._cached("running", 0.25, self._running)

    def _running(self) -> builtins.list[Progress]:
        key = self._key("state", JobState.RUNNING.value)

        def read() -> tuple[list[str], list[list[str | None]], tuple[int, int]]:
            ids = self._r.zrange(key, 0, -1)
            pipe = self._r.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(self._key("job", job_id), "step", "steps", "eta_s", "started_at",
                           "request")
            pipe.time()
            *rows, t = pipe.execute()
            return ids, rows, t

        ids, rows, (sec, usec) = self._call("read progress", read)
        now = sec + usec / 1e6
        out = []
        for job_id, (step, steps, eta, started, request) in zip(ids, rows, strict=True):
            if request is None:
                continue
            total = int(steps) if steps else int(json.loads(request).get("steps", 0))
            age = now - float(started) if started else 0.0
            out.append(Progress(job_id, int(step or 0), total,
                                float(eta) if eta else None, time.monotonic() - age))
        return out

    def position(self, job: Job) -> int:
        if job.state is not JobState.QUEUED:
            return 0
        key = self._key("state", JobState.QUEUED.value)
        rank = self._call("read the queue", lambda: self._r.zrank(key, job.id))
        return int(rank) if rank is not None else 0

    def eta_s(self, job: Job) -> float | None:
        """The work ahead of the job spread over the live workers, plus its own expected
        service time (mean of past jobs of its shape, else a rough guess)."""
        if job.state.terminal:
            return 0.0
        own = self.expected_service_s(job.request)
        if job.state is JobState.RUNNING:
            for p in self.running():
                if p.job_id == job.id and p.eta_s is not None:
                    return p.eta_s
            return own
        plan = self._cached("ahead", 0.5, self._work_ahead)
        if job.id not in plan:  # queued since the plan was made
            self._cache.pop("ahead", None)
            plan = self._cached("ahead", 0.5, self._work_ahead)
        ahead = plan.get(job.id, 0.0)
        ahead += sum(p.eta_s or 0.0 for p in self.running())
        return ahead / max(1, len(self.workers())) + own

    def _work_ahead(self) -> dict[str, float]:
        """Expected seconds of queued work ahead of each queued job (one pass, cached)."""
        key = self._key("state", JobState.QUEUED.value)

        def read() -> tuple[list[str], list[str | None]]:
            ids = self._r.zrange(key, 0, -1)
            pipe = self._r.pipeline(transaction=False)
            for job_id in ids:
                pipe.hget(self._key("job", job_id), "request")
            return ids, pipe.execute()

        ids, requests = self._call("read the queue", read)
        ahead, total = {}, 0.0
        for job_id, raw in zip(ids, requests, strict=True):
            ahead[job_id] = total
            if raw:
                total += self.expected_service_s(GenerationRequest.from_dict(json.loads(raw)))
        return ahead

    def expected_service_s(self, req: GenerationRequest) -> float:
        table = self._cached("service_s", 2.0, lambda: self._call(
            "read service times", lambda: self._r.hgetall(self._key("service_s"))))
        known = table.get(shape_label(req))
        return float(known) if known else rough_service_s(req)

    def _drain_s(self) -> float:
        nxt = self._call("read the queue", lambda: self._r.zrange(
            self._key("state", JobState.QUEUED.value), 0, 0))
        jobs = self._jobs(nxt)
        return self.expected_service_s(jobs[0].request) if jobs else 5.0

    # -- events ------------------------------------------------------------------------

    def events_since(self, job_id: str, after: tuple[int, int]) -> builtins.list[JobEvent]:
        """The job's events after ``after`` from its event stream (which survives API
        restarts). A finished job whose events expired still gets its final event."""
        entries = self._call("read job events", lambda: self._r.xrange(
            self._key("events", job_id)))
        events = sorted((JobEvent(job_id, int(f["a"]), int(f["n"]), f["type"],
                                  json.loads(f["data"])) for _id, f in entries),
                        key=lambda e: e.key)
        if not any(e.terminal for e in events):
            raw = self._call("read a job", lambda: self._r.hgetall(self._key("job", job_id)))
            if raw and JobState(raw["state"]).terminal:
                events.append(JobEvent(job_id, int(raw.get("ev_attempt", 0)),
                                       int(raw.get("ev_n", 0)), raw["state"],
                                       {"error": raw.get("error")}))
        return [e for e in events if e.key > after]

    def open_events(self, job_id: str | None = None) -> Subscription:
        return self.hub.open(job_id)

    async def wait(self, job_id: str) -> Job:
        with self.hub.open(job_id) as sub:
            while True:
                job = await asyncio.to_thread(self.get, job_id)
                if job.state.terminal:
                    return job
                try:  # looked at again every 2 s, in case an event was missed
                    await asyncio.wait_for(_next_terminal(sub), timeout=2.0)
                except TimeoutError:
                    continue

    # -- workers and the stream --------------------------------------------------------

    def workers(self) -> builtins.list[WorkerInfo]:
        """Workers that said hello recently (cached for 2 s)."""
        return self._cached("workers", 2.0, self._workers)

    def _workers(self) -> builtins.list[WorkerInfo]:
        out = self.conn.run_script("workers", [self.conn.prefix, WORKER_FRESH_S],
                                   "list workers")
        return [WorkerInfo(c, json.loads(raw), float(ago))
                for c, raw, ago in zip(out[::3], out[1::3], out[2::3], strict=True)]

    def stats(self) -> StreamStats:
        def read() -> tuple[int, list[dict[str, Any]]]:
            return self._r.xlen(self.stream), self._r.xinfo_groups(self.stream)

        length, groups = self._call("read the stream", read)
        group = next((g for g in groups if g.get("name") == self.group), {})
        lag = group.get("lag")
        return StreamStats(
            length=int(length), lag=int(lag) if lag is not None else None,
            pending=int(group.get("pending", 0)), consumers=int(group.get("consumers", 0)),
            workers=len(self._workers()),
        )


async def _next_terminal(sub: Subscription) -> JobEvent:
    while True:
        event = await sub.get()
        if event.terminal:
            return event
