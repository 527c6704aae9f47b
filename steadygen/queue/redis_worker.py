"""The worker's side of the Redis job stream: take a job, keep the claim alive, report
progress, write the outcome; say hello and goodbye; tidy up now and then.

At-least-once delivery: a worker reads an entry with XREADGROUP, keeps it alive with a
heartbeat (XCLAIM to itself, which resets its idle time), and the entry is XACKed (then
XDELed) only by the script that writes the job's terminal state, after the images are on
disk. A worker that dies stops heartbeating; after ``visibility_timeout_s`` another worker
takes the entry over with XAUTOCLAIM and runs the job again (attempt + 1). The attempt
number and the worker name fence stale workers: their progress events are dropped and they
stop. The first terminal write wins; later ones are acknowledged and ignored. A job that
failed (or whose workers died) ``max_attempts`` times ends ``failed`` with
``result.dead_letter = true``. Undelivered entries are never deleted (that would make the
group's lag unknown to KEDA); a worker that reads the entry of a cancelled job drops it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from steadygen.queue.job import Job, JobState
from steadygen.queue.redis_streams import HISTORY_TTL_S, RedisStreams, job_from_hash, shape_label
from steadygen.request import GenerationRequest

if TYPE_CHECKING:
    from steadygen.queue.redis_queue import RedisQueue

log = logging.getLogger("steadygen.queue.redis")


@dataclass
class Claim:
    """A job a worker has started: the stream entry it holds and the attempt it runs."""

    job: Job
    entry: str
    attempt: int
    consumer: str


class WorkerQueue:
    """The calls a worker process makes on the stream (the API side is RedisQueue)."""

    def __init__(self, conn: RedisStreams, *, visibility_timeout_s: float, max_attempts: int):
        self.conn = conn
        self.visibility_timeout_s = visibility_timeout_s
        self.max_attempts = max_attempts
        self._cursor = "0-0"
        self._last_reclaim = 0.0

    @classmethod
    def from_queue(cls, queue: RedisQueue) -> WorkerQueue:
        """The worker side of ``queue``'s stream, on the same connection."""
        return cls(queue.conn, visibility_timeout_s=queue.visibility_timeout_s,
                   max_attempts=queue.max_attempts)

    def _args(self, claim: Claim) -> list[Any]:
        """The first ARGV of the finish and requeue scripts."""
        c = self.conn
        return [c.prefix, c.stream, c.group, claim.job.id, claim.consumer, claim.attempt]

    def take(self, consumer: str, block_s: float = 1.0) -> Claim | None:
        """The next job for ``consumer``: first one whose worker went silent for longer
        than the visibility timeout (XAUTOCLAIM), else a new one (XREADGROUP, blocking up
        to ``block_s``). None when there is nothing, or the entry needed no work."""
        r, stream, group = self.conn.client, self.conn.stream, self.conn.group
        entry: tuple[str, dict[str, str]] | None = None
        if time.monotonic() - self._last_reclaim >= min(1.0, self.visibility_timeout_s / 4):
            self._last_reclaim = time.monotonic()
            idle_ms = int(self.visibility_timeout_s * 1000)
            cursor, got, *_ = self.conn.call("reclaim jobs", lambda: r.xautoclaim(
                stream, group, consumer, idle_ms, self._cursor, count=1))
            self._cursor = cursor
            if got:
                entry = got[0]
                log.warning("took over job %s (stream entry %s): its worker was silent for "
                            "more than %.0f s", entry[1].get("job"), entry[0],
                            self.visibility_timeout_s)
        if entry is None:
            got = self.conn.call("read the stream", lambda: r.xreadgroup(
                group, consumer, {stream: ">"}, count=1, block=max(1, int(block_s * 1000))))
            if not got or not got[0][1]:
                return None
            entry = got[0][1][0]
        entry_id, fields = entry
        return self.start_job(consumer, entry_id, fields.get("job", ""))

    def start_job(self, consumer: str, entry: str, job_id: str) -> Claim | None:
        c = self.conn
        out = c.run_script("start", [c.prefix, c.stream, c.group, job_id, entry, consumer,
                                     self.max_attempts, HISTORY_TTL_S], "start a job")
        if out[0] == "dead":
            log.error("job %s: %s", job_id, out[1])
        if out[0] != "run":
            return None
        flat = out[1]
        job = job_from_hash(dict(zip(flat[::2], flat[1::2], strict=True)))
        return Claim(job=job, entry=entry, attempt=job.attempts, consumer=consumer)

    def heartbeat(self, claim: Claim) -> tuple[bool, bool]:
        """Keep the claim alive. Returns (still ours, cancel requested)."""
        c = self.conn
        ours, cancel = c.run_script("heartbeat", [
            c.stream, c.group, claim.consumer, claim.entry, c.prefix, claim.job.id],
            "renew a claim")
        return bool(ours), bool(cancel)

    def publish_step(self, claim: Claim, data: dict[str, Any]) -> tuple[bool, bool]:
        """Record progress and send the step event (one try: progress is best effort, a
        step must not wait for Redis). Returns (still ours, cancel requested)."""
        ok, cancel = self.conn.run_script("step", [
            self.conn.prefix, claim.job.id, claim.consumer, claim.attempt, data.get("step", 0),
            data.get("steps", 0), data.get("eta_s", ""), json.dumps(data)],
            "publish progress", attempts=1)
        return bool(ok), bool(cancel)

    def finish(
        self,
        claim: Claim,
        state: JobState,
        data: dict[str, Any],
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        attempts: int | None = None,
    ) -> bool:
        """Write the terminal state, send the final event, acknowledge the stream entry,
        in one step. False when the job had already ended (this write changed nothing)."""
        won = self.conn.run_script("finish", [
            *self._args(claim), state.value, json.dumps(result) if result is not None else "",
            error or "", json.dumps(data), HISTORY_TTL_S], "record a result", attempts)
        return bool(won)

    def requeue(self, claim: Claim, error: str, *, handing_back: bool = False,
                attempts: int | None = None) -> bool:
        """Put the job back at the end of the stream (a failed attempt, or a stopping
        worker handing it back, which does not count as an attempt)."""
        data = {"attempt": claim.attempt, "error": error or None,
                "attempts_left": self.max_attempts - claim.attempt + int(handing_back)}
        done = self.conn.run_script("requeue", [
            *self._args(claim), error, json.dumps(data), int(handing_back)],
            "requeue a job", attempts)
        return bool(done)

    def hello(self, consumer: str, info: dict[str, Any]) -> None:
        """Say this worker is alive (and what it serves) to the API processes."""
        self.conn.run_script("hello", [self.conn.prefix, consumer, json.dumps(info)],
                             "register the worker")

    def goodbye(self, consumer: str) -> None:
        """Remove a stopping worker; its consumer goes too when it holds no entry."""
        c = self.conn

        def run() -> None:
            c.client.hdel(c.key("workers"), consumer)
            c.client.zrem(c.key("seen"), consumer)
            pending = c.client.xpending_range(c.stream, c.group, "-", "+", 1,
                                              consumername=consumer)
            if not pending:
                c.client.xgroup_delconsumer(c.stream, c.group, consumer)

        c.call("unregister the worker", run)

    def record_service_s(self, req: GenerationRequest, total_s: float) -> None:
        """Keep a moving mean of service time per request shape, for the API's ETAs."""
        c = self.conn
        key, label = c.key("service_s"), shape_label(req)
        old = c.call("read service times", lambda: c.client.hget(key, label))
        value = total_s if old is None else 0.8 * float(old) + 0.2 * total_s
        c.call("write service times", lambda: c.client.hset(key, label, f"{value:.4f}"))

    def tidy(self, idle_consumer_s: float = 3600.0, batch: int = 200) -> None:
        """Housekeeping any worker may run now and then: forget consumers that hold no
        entry and were idle for an hour, workers that stopped saying hello, and the oldest
        finished jobs whose history expired (so counts and lists stay right)."""
        c = self.conn
        r = c.client

        def run() -> None:
            for consumer in r.xinfo_consumers(c.stream, c.group):
                idle_ms = int(consumer.get("idle", 0))
                if int(consumer.get("pending", 0)) == 0 and idle_ms > idle_consumer_s * 1000:
                    r.xgroup_delconsumer(c.stream, c.group, consumer["name"])
            c.scripts["forget"](args=[c.prefix, idle_consumer_s])
            for state in ("index", *(s.value for s in JobState if s.terminal)):
                key = c.key("index") if state == "index" else c.key("state", state)
                ids = r.zrange(key, 0, batch - 1)
                pipe = r.pipeline(transaction=False)
                for job_id in ids:
                    pipe.exists(c.key("job", job_id))
                gone = [i for i, there in zip(ids, pipe.execute(), strict=True) if not there]
                if gone:
                    r.zrem(key, *gone)

        c.call("tidy the consumer group", run)
