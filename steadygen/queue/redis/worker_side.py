"""The worker's side of the Redis job stream: take a job, keep the claim alive, report
progress, write the outcome; say hello and goodbye; tidy up now and then.

At-least-once delivery: a worker reads an entry with XREADGROUP, keeps it alive with a
heartbeat (XCLAIM to itself, which resets its idle time), and the entry is XACKed (then
XDELed) only by the script that writes the job's terminal state, after the images are on
disk. A worker that dies stops heartbeating; after ``visibility_timeout_s`` another worker
takes the entry over with XAUTOCLAIM and runs the job again (attempt + 1). The attempt
number and the worker name fence stale workers: their progress events are dropped and they
stop. The first terminal write wins; later ones are acknowledged and ignored. A job whose
workers died ``max_attempts`` times ends ``failed`` with ``result.dead_letter = true`` (the
job worker does the same for a job that failed that often).

Priority: the stream delivers entries in arrival order, and an entry is only a token. The
start script runs the best waiting job (priority, then arrival: ``P state:queued`` is
scored that way) and, when that is not the entry's own job, swaps the two jobs' entries, so
each job keeps exactly one live entry and KEDA's lag still counts the waiting jobs.
Undelivered entries are never deleted (that would make the group's lag unknown to KEDA); a
worker that reads the entry of a cancelled job drops it.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from steadygen.queue.contract import Claim, LeaseState
from steadygen.queue.eta import WINDOW, shape_label
from steadygen.queue.job import JobState
from steadygen.queue.redis.connection import HISTORY_TTL_S, RedisStreams, job_from_hash
from steadygen.request import GenerationRequest

log = logging.getLogger("steadygen.queue.redis")


class WorkerSide:
    """The calls a worker process makes on the stream (the API side is api_side.py)."""

    conn: RedisStreams
    visibility_timeout_s: float
    max_attempts: int
    _cursor: str
    _last_reclaim: float

    @property
    def heartbeat_every_s(self) -> float:
        """Renew a claim four times per visibility timeout (at most every 5 s)."""
        return max(0.05, min(self.visibility_timeout_s / 4, 5.0))

    def _args(self, claim: Claim) -> list[Any]:
        """The first ARGV of the finish and requeue scripts."""
        c = self.conn
        return [c.prefix, c.stream, c.group, claim.job.id, claim.worker, claim.attempt]

    def claim(self, worker: str, block_s: float = 1.0) -> Claim | None:
        """The next job for ``worker``: first one whose worker went silent for longer
        than the visibility timeout (XAUTOCLAIM), else a new one (XREADGROUP, blocking up
        to ``block_s``). None when there is nothing, or the entry needed no work."""
        r, stream, group = self.conn.client, self.conn.stream, self.conn.group
        entry: tuple[str, dict[str, str]] | None = None
        if time.monotonic() - self._last_reclaim >= min(1.0, self.visibility_timeout_s / 4):
            self._last_reclaim = time.monotonic()
            idle_ms = int(self.visibility_timeout_s * 1000)
            cursor, got, *_ = self.conn.call("reclaim jobs", lambda: r.xautoclaim(
                stream, group, worker, idle_ms, self._cursor, count=1))
            self._cursor = cursor
            if got:
                entry = got[0]
                log.warning("took over stream entry %s: its worker was silent for more "
                            "than %.0f s", entry[0], self.visibility_timeout_s)
        if entry is None:
            got = self.conn.call("read the stream", lambda: r.xreadgroup(
                group, worker, {stream: ">"}, count=1, block=max(1, int(block_s * 1000))))
            if not got or not got[0][1]:
                return None
            entry = got[0][1][0]
        entry_id, fields = entry
        return self._start(worker, entry_id, fields.get("job", ""))

    def _start(self, worker: str, entry: str, job_id: str) -> Claim | None:
        c = self.conn
        out = c.run_script("start", [c.prefix, c.stream, c.group, job_id, entry, worker,
                                     self.max_attempts, HISTORY_TTL_S], "start a job")
        if out[0] == "dead":
            log.error("job %s: %s", out[2] if len(out) > 2 else job_id, out[1])
        if out[0] != "run":
            return None
        flat = out[1]
        job = job_from_hash(dict(zip(flat[::2], flat[1::2], strict=True)))
        return Claim(job=job, attempt=job.attempts, worker=worker, token=entry)

    def heartbeat(self, claim: Claim) -> LeaseState:
        """Keep the claim alive; says whether it is still ours and whether to cancel."""
        c = self.conn
        ours, cancel = c.run_script("heartbeat", [
            c.stream, c.group, claim.worker, claim.token, c.prefix, claim.job.id],
            "renew a claim")
        return LeaseState(bool(ours), bool(cancel))

    def progress(self, claim: Claim, data: dict[str, Any]) -> LeaseState:
        """Record progress and send the step event (one try: progress is best effort, a
        step must not wait for Redis)."""
        ok, cancel = self.conn.run_script("step", [
            self.conn.prefix, claim.job.id, claim.worker, claim.attempt, data.get("step", 0),
            data.get("steps", 0), data.get("eta_s", ""), json.dumps(data),
            data.get("preview", "")], "publish progress", attempts=1)
        return LeaseState(bool(ok), bool(cancel))

    def set_expected(self, claim: Claim, eta_s: float) -> None:
        """Until its first step, a running job is expected to take its whole service."""
        key = self.conn.key("job", claim.job.id)
        self.conn.call("publish the expected service",
                       lambda: self.conn.client.hsetnx(key, "eta_s", f"{eta_s:.3f}"),
                       attempts=1)

    def finish(self, claim: Claim, state: JobState, data: dict[str, Any], *,
               result: dict[str, Any] | None = None, error: str | None = None) -> bool:
        """Write the terminal state, send the final event, acknowledge the stream entry,
        in one step. False when the job had already ended (this write changed nothing)."""
        won = self.conn.run_script("finish", [
            *self._args(claim), state.value, json.dumps(result) if result is not None else "",
            error or "", json.dumps(data), HISTORY_TTL_S], "record a result", attempts=1)
        return bool(won)

    def retry(self, claim: Claim, error: str, *, handing_back: bool = False) -> bool:
        """Put the job back in the queue as a new stream entry (a failed attempt, or a
        stopping worker handing it back, which does not count as an attempt)."""
        data = {"attempt": claim.attempt, "error": error or None,
                "attempts_left": self.max_attempts - claim.attempt + int(handing_back)}
        done = self.conn.run_script("requeue", [
            *self._args(claim), error, json.dumps(data), int(handing_back)],
            "requeue a job", attempts=1)
        return bool(done)

    def observe_service(self, req: GenerationRequest, service_s: float,
                        cold: bool = False) -> None:
        """Add a job's service time to its shape's recent list (for every process's ETAs)."""
        self.conn.run_script("service", [self.conn.prefix, shape_label(req),
                                         f"{service_s:.4f}", WINDOW, int(cold)],
                             "record a service time")

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
