"""The Redis queue as the HTTP routes see it: submit, read, list, cancel, counts, progress,
events. The worker side of the same stream is worker_side.py; both are joined in queue.py.
"""

from __future__ import annotations

import builtins
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from steadygen.errors import JobNotFound, QueueFull, QueueUnavailable
from steadygen.queue.base import QueueBase
from steadygen.queue.contract import Progress, QueueStats, Recorder
from steadygen.queue.eta import ServiceTimes
from steadygen.queue.job import Job, JobEvent, JobState, new_job_id
from steadygen.queue.redis.connection import HISTORY_TTL_S, RedisStreams, job_from_hash
from steadygen.request import GenerationRequest

log = logging.getLogger("steadygen.queue.redis")

T = TypeVar("T")
WORKER_FRESH_S = 10.0  # a worker that has not said hello for this long is gone
PLAN_TTL_S = 0.5  # positions and ETAs are computed from one read of the queue this long


class ApiSide(QueueBase):
    """Signatures say ``builtins.list`` because the method ``list`` hides the builtin."""

    conn: RedisStreams
    stream: str
    max_queue: int
    recorder: Recorder
    _accepting: bool
    _cache: dict[str, tuple[float, Any]]

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

    # -- jobs --------------------------------------------------------------------------

    def submit(self, req: GenerationRequest, priority: int = 0) -> Job:
        if not self._accepting:
            raise QueueUnavailable("the server is shutting down and takes no new jobs; "
                                   "retry once it is back")
        job = Job(id=new_job_id(), request=req, priority=priority)
        out = self.conn.run_script("submit", [
            self.conn.prefix, self.stream, job.id, json.dumps(req.to_dict()), priority,
            self.max_queue], "submit a job")
        if out[0] == "full":
            self.recorder.job_rejected()
            raise QueueFull(self.max_queue, retry_after_s=max(1.0, self.drain_s()))
        self._cache.pop("plan", None)
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
        self._cache.pop("plan", None)
        job = self.get(job_id)
        if out == "cancelled":
            self.recorder.job_finished(job)
        return job

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

    # -- progress ----------------------------------------------------------------------

    def running(self) -> builtins.list[Progress]:
        return self._cached("running", 0.25, self._running)

    def _running(self) -> builtins.list[Progress]:
        key = self._key("state", JobState.RUNNING.value)

        def read() -> tuple[list[str], list[list[str | None]], tuple[int, int]]:
            ids = self._r.zrange(key, 0, -1)
            pipe = self._r.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(self._key("job", job_id), "step", "steps", "eta_s", "started_at",
                           "request", "preview")
            pipe.time()
            *rows, t = pipe.execute()
            return ids, rows, t

        ids, rows, (sec, usec) = self._call("read progress", read)
        now = sec + usec / 1e6
        out = []
        for job_id, (step, steps, eta, started, request, preview) in zip(ids, rows, strict=True):
            if request is None:
                continue
            total = int(steps) if steps else int(json.loads(request).get("steps", 0))
            age = now - float(started) if started else 0.0
            out.append(Progress(job_id, int(step or 0), total, float(eta) if eta else None,
                                time.monotonic() - age, preview or None))
        return out

    # -- what QueueBase computes from (positions, ETAs) --------------------------------

    def _plan(self) -> dict[str, tuple[int, float]]:
        return self._cached("plan", PLAN_TTL_S, super()._plan)

    def announce_positions(self) -> None:
        """After a job started: from a fresh read of the queue, not the cached plan."""
        self._cache.pop("plan", None)
        self._cache.pop("running", None)
        super().announce_positions()

    def _waiting(self) -> builtins.list[Job]:
        key = self._key("state", JobState.QUEUED.value)
        ids = self._call("read the queue", lambda: self._r.zrange(key, 0, -1))
        return self._jobs(ids)

    def _service_times(self) -> ServiceTimes:
        def read() -> ServiceTimes:
            raw = self._call("read service times",
                             lambda: self._r.hgetall(self._key("service_s")))
            return ServiceTimes({label: json.loads(v) for label, v in raw.items()
                                 if v.startswith("[")},
                                cold=[k.removesuffix("|cold") for k in raw
                                      if k.endswith("|cold")])

        return self._cached("service_s", 2.0, read)

    def _worker_count(self) -> int:
        return len(self.workers())

    def _note(self, job_id: str, kind: str, data: dict[str, Any]) -> None:
        self.conn.run_script("note", [self.conn.prefix, job_id, kind, json.dumps(data)],
                             "send a job event", attempts=1)

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

    # -- workers and the stream --------------------------------------------------------

    def workers(self) -> builtins.list[WorkerInfo]:
        """Workers that said hello recently (cached for 2 s)."""
        return self._cached("workers", 2.0, self._workers)

    def _workers(self) -> builtins.list[WorkerInfo]:
        out = self.conn.run_script("workers", [self.conn.prefix, WORKER_FRESH_S],
                                   "list workers")
        return [WorkerInfo(c, json.loads(raw), float(ago))
                for c, raw, ago in zip(out[::3], out[1::3], out[2::3], strict=True)]

    def stats(self) -> QueueStats:
        def read() -> tuple[int, list[dict[str, Any]]]:
            return self._r.xlen(self.stream), self._r.xinfo_groups(self.stream)

        length, groups = self._call("read the stream", read)
        group = next((g for g in groups if g.get("name") == self.conn.group), {})
        lag = group.get("lag")
        counts = self.counts()
        return QueueStats(
            depth=counts[JobState.QUEUED.value], running=counts[JobState.RUNNING.value],
            workers=len(self._workers()), lag=int(lag) if lag is not None else None,
            pending=int(group.get("pending", 0)), stream_length=int(length),
        )


@dataclass(frozen=True)
class WorkerInfo:
    """A live worker as it described itself in its last hello."""

    consumer: str
    info: dict[str, Any]
    seen_s_ago: float
