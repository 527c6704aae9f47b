"""The job queue in Redis, for many GPU workers behind one API (``serve --queue redis://...``).

Layout (every key starts with the stream name, ``P = "<stream>:"``)::

    <stream>              Stream of {job: id}; consumer group <group>. One live entry per job.
    P job:<id>            Hash: the Job's fields (request and result as JSON), event counters,
                          live progress (step, steps, eta_s) and the id of its stream entry.
    P events:<id>         Stream of that job's events (a, n, type, data); MAXLEN ~1000.
    P events              Stream of every job's events, for the API processes' EventHub.
    P state:<state>       Sorted sets of job ids per state (score: arrival; counts, lists).
    P index               Sorted set of every job id by arrival (GET /v1/jobs).
    P seq                 Arrival counter.
    P workers, P seen     Live workers (info JSON; last heartbeat, Redis clock).
    P service_s           Mean service seconds per request shape (for ETAs), kept by workers.

Every state change is one Lua script, so a job's hash, its state sets, its events and its
stream entry never disagree, and all times come from one clock (Redis ``TIME``).

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

The scripts build key names from the prefix: standalone Redis (or Sentinel), not Cluster.
This is the only module that imports redis.
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
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from steadygen.errors import JobNotFound, QueueFull, QueueUnavailable
from steadygen.queue.events import EventHub, Subscription
from steadygen.queue.job import Job, JobEvent, JobState, new_job_id
from steadygen.queue.local import Progress, Recorder
from steadygen.request import GenerationRequest

log = logging.getLogger("steadygen.queue.redis")

T = TypeVar("T")
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
HISTORY_TTL_S = 7 * 86400  # finished jobs and their events are kept this long
MIN_VERSION = (6, 2)  # XAUTOCLAIM; 7.0 for the group lag KEDA scales on
WORKER_FRESH_S = 10.0  # a worker that has not said hello for this long is gone

_LUA_LIB = """
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function fmt(x) return string.format('%.6f', x) end
local function is_terminal(s) return s == 'succeeded' or s == 'failed' or s == 'cancelled' end
-- Append an event to the job's stream and the all-jobs stream. Its id is (attempt, n):
-- a higher attempt starts at n = 0, anything else continues the current numbering.
local function publish(p, id, kind, data, attempt)
  local jk = p .. 'job:' .. id
  local cur = tonumber(redis.call('HGET', jk, 'ev_attempt') or '0')
  local n = tonumber(redis.call('HGET', jk, 'ev_n') or '0')
  if attempt ~= nil and attempt > cur then cur = attempt; n = 0 end
  redis.call('HSET', jk, 'ev_attempt', cur, 'ev_n', n + 1)
  redis.call('XADD', p .. 'events:' .. id, 'MAXLEN', '~', 1000, '*',
             'a', cur, 'n', n, 'type', kind, 'data', data)
  redis.call('XADD', p .. 'events', 'MAXLEN', '~', 10000, '*',
             'job', id, 'a', cur, 'n', n, 'type', kind, 'data', data)
end
local function move(p, id, from, to, score)
  if from then redis.call('ZREM', p .. 'state:' .. from, id) end
  redis.call('ZADD', p .. 'state:' .. to, score, id)
end
-- Acknowledge a delivered entry and delete it; an undelivered one is left for a worker
-- to read and drop (deleting it would make the group's lag unknown).
local function release(stream, group, entry)
  if entry and redis.call('XACK', stream, group, entry) == 1 then
    redis.call('XDEL', stream, entry)
  end
end
local function retire(p, id, ttl)
  redis.call('EXPIRE', p .. 'job:' .. id, ttl)
  redis.call('EXPIRE', p .. 'events:' .. id, ttl)
end
"""

# ARGV: prefix, stream, id, request json, priority, max_queue
_SUBMIT = """
local p, stream, id = ARGV[1], ARGV[2], ARGV[3]
local jk = p .. 'job:' .. id
if redis.call('EXISTS', jk) == 1 then return {'ok'} end  -- a retried submit
local depth = redis.call('ZCARD', p .. 'state:queued')
if depth >= tonumber(ARGV[6]) then return {'full', tostring(depth)} end
local seq = redis.call('INCR', p .. 'seq')
local entry = redis.call('XADD', stream, '*', 'job', id)
redis.call('HSET', jk, 'id', id, 'seq', seq, 'state', 'queued', 'priority', ARGV[5],
           'request', ARGV[4], 'created_at', fmt(now()), 'attempts', 0,
           'cancel_requested', 0, 'entry', entry, 'ev_attempt', 0, 'ev_n', 0)
move(p, id, nil, 'queued', seq)
redis.call('ZADD', p .. 'index', seq, id)
publish(p, id, 'queued', cjson.encode({position = depth}), 0)
return {'ok'}
"""

# ARGV: prefix, id, history ttl
_CANCEL = """
local p, id = ARGV[1], ARGV[2]
local jk = p .. 'job:' .. id
local st = redis.call('HGET', jk, 'state')
if not st then return 'missing' end
if st == 'queued' then
  redis.call('HSET', jk, 'state', 'cancelled', 'finished_at', fmt(now()), 'cancel_requested', 1)
  move(p, id, 'queued', 'cancelled', redis.call('HGET', jk, 'seq'))
  publish(p, id, 'cancelled', cjson.encode({at_step = 0}), nil)
  retire(p, id, tonumber(ARGV[3]))
  return 'cancelled'
end
if st == 'running' then redis.call('HSET', jk, 'cancel_requested', 1) end
return st
"""

# ARGV: prefix, stream, group, id, entry, consumer, max_attempts, history ttl
_START = """
local p, stream, group, id, entry, me = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local jk = p .. 'job:' .. id
local st = redis.call('HGET', jk, 'state')
if not st or is_terminal(st) or redis.call('HGET', jk, 'entry') ~= entry then
  release(stream, group, entry)  -- finished, cancelled, expired, or an old entry
  return {'skip'}
end
local attempts = tonumber(redis.call('HGET', jk, 'attempts'))
local seq = redis.call('HGET', jk, 'seq')
if st == 'running' and redis.call('HGET', jk, 'worker') == me then
  return {'run', redis.call('HGETALL', jk)}  -- a retried start
end
if redis.call('HGET', jk, 'cancel_requested') == '1' then
  redis.call('HSET', jk, 'state', 'cancelled', 'finished_at', fmt(now()))
  redis.call('HDEL', jk, 'step', 'steps', 'eta_s')
  move(p, id, st, 'cancelled', seq)
  publish(p, id, 'cancelled', cjson.encode({at_step = 0}), nil)
  release(stream, group, entry)
  retire(p, id, tonumber(ARGV[8]))
  return {'skip'}
end
if attempts >= tonumber(ARGV[7]) then
  local err = 'dead letter: started ' .. attempts .. ' times without finishing '
    .. '(its worker died or stopped each time)'
  local last = redis.call('HGET', jk, 'last_error')
  if last then err = err .. '; last error: ' .. last end
  redis.call('HSET', jk, 'state', 'failed', 'finished_at', fmt(now()), 'error', err,
             'result', cjson.encode({dead_letter = true}))
  redis.call('HDEL', jk, 'step', 'steps', 'eta_s')
  move(p, id, st, 'failed', seq)
  publish(p, id, 'failed', cjson.encode({error = err, dead_letter = true}), nil)
  release(stream, group, entry)
  retire(p, id, tonumber(ARGV[8]))
  return {'dead', err}
end
local before = redis.call('HGET', jk, 'worker')
attempts = attempts + 1
redis.call('HSET', jk, 'state', 'running', 'attempts', attempts, 'started_at', fmt(now()),
           'worker', me)
redis.call('HDEL', jk, 'step', 'steps', 'eta_s')
move(p, id, st, 'running', seq)
local data = {attempt = attempts, worker = me}
if st == 'running' and before then data.taken_over_from = before end
publish(p, id, 'started', cjson.encode(data), attempts)
return {'run', redis.call('HGETALL', jk)}
"""

# ARGV: prefix, id, consumer, attempt, step, steps, eta_s, data
_STEP = """
local p, id = ARGV[1], ARGV[2]
local jk = p .. 'job:' .. id
local v = redis.call('HMGET', jk, 'state', 'attempts', 'worker', 'cancel_requested')
if v[1] ~= 'running' or v[2] ~= ARGV[4] or v[3] ~= ARGV[3] then return {0, 1} end
redis.call('HSET', jk, 'step', ARGV[5], 'steps', ARGV[6], 'eta_s', ARGV[7])
publish(p, id, 'step', ARGV[8], tonumber(ARGV[4]))
return {1, tonumber(v[4] or '0')}
"""

# ARGV: stream, group, consumer, entry, prefix, id
_HEARTBEAT = """
local pend = redis.call('XPENDING', ARGV[1], ARGV[2], ARGV[4], ARGV[4], 1)
if #pend == 0 or pend[1][2] ~= ARGV[3] then return {0, 0} end
redis.call('XCLAIM', ARGV[1], ARGV[2], ARGV[3], 0, ARGV[4], 'JUSTID')
local c = redis.call('HGET', ARGV[5] .. 'job:' .. ARGV[6], 'cancel_requested')
return {1, tonumber(c or '0')}
"""

# ARGV: prefix, stream, group, id, consumer, attempt, state, result, error, data, ttl
# The first terminal write wins. Success is accepted from any attempt (its result is
# real); a failure or cancellation only from the worker that holds the current attempt.
_FINISH = """
local p, stream, group, id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local jk = p .. 'job:' .. id
local v = redis.call('HMGET', jk, 'state', 'attempts', 'worker', 'entry', 'seq')
if not v[1] then return 0 end
if is_terminal(v[1]) then release(stream, group, v[4]); return 0 end
local new = ARGV[7]
if new ~= 'succeeded' and (v[2] ~= ARGV[6] or v[3] ~= ARGV[5]) then return 0 end
redis.call('HSET', jk, 'state', new, 'finished_at', fmt(now()))
if ARGV[8] ~= '' then redis.call('HSET', jk, 'result', ARGV[8]) end
if ARGV[9] ~= '' then redis.call('HSET', jk, 'error', ARGV[9]) end
redis.call('HDEL', jk, 'step', 'steps', 'eta_s')
move(p, id, v[1], new, v[5])
publish(p, id, new, ARGV[10], nil)
release(stream, group, v[4])
retire(p, id, tonumber(ARGV[11]))
return 1
"""

# ARGV: prefix, stream, group, id, consumer, attempt, error, data, keep_attempt
# A failed attempt goes back to the end of the stream as a new entry (the old one is
# acknowledged). keep_attempt = 1 when a stopping worker hands the job back: not a failure.
_REQUEUE = """
local p, stream, group, id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local jk = p .. 'job:' .. id
local v = redis.call('HMGET', jk, 'state', 'attempts', 'worker', 'entry')
if v[1] ~= 'running' or v[2] ~= ARGV[6] or v[3] ~= ARGV[5] then return 0 end
local entry = redis.call('XADD', stream, '*', 'job', id)
release(stream, group, v[4])
redis.call('HSET', jk, 'state', 'queued', 'entry', entry)
if ARGV[7] ~= '' then redis.call('HSET', jk, 'last_error', ARGV[7]) end
if ARGV[9] == '1' then redis.call('HINCRBY', jk, 'attempts', -1) end
redis.call('HDEL', jk, 'started_at', 'worker', 'step', 'steps', 'eta_s')
move(p, id, 'running', 'queued', redis.call('INCR', p .. 'seq'))
publish(p, id, 'requeued', ARGV[8], nil)
return 1
"""

# ARGV: prefix, consumer, info json
_HELLO = """
local t = now()
redis.call('HSET', ARGV[1] .. 'workers', ARGV[2], ARGV[3])
redis.call('ZADD', ARGV[1] .. 'seen', t, ARGV[2])
return fmt(t)
"""

# ARGV: prefix, fresh_s -> {consumer, info, seconds since its hello, ...} of the workers
# heard from in the last fresh_s seconds (Redis clock)
_WORKERS = """
local t = now()
local ids = redis.call('ZRANGEBYSCORE', ARGV[1] .. 'seen', t - tonumber(ARGV[2]), '+inf',
                       'WITHSCORES')
local out = {}
for i = 1, #ids, 2 do
  table.insert(out, ids[i])
  table.insert(out, redis.call('HGET', ARGV[1] .. 'workers', ids[i]) or '{}')
  table.insert(out, fmt(t - tonumber(ids[i + 1])))
end
return out
"""

# ARGV: prefix, idle_s -> consumers not heard from for idle_s seconds, now forgotten
_FORGET = """
local t = now()
local ids = redis.call('ZRANGEBYSCORE', ARGV[1] .. 'seen', '-inf', t - tonumber(ARGV[2]))
for _, c in ipairs(ids) do
  redis.call('ZREM', ARGV[1] .. 'seen', c)
  redis.call('HDEL', ARGV[1] .. 'workers', c)
end
return ids
"""


@dataclass
class Claim:
    """A job a worker has started: the stream entry it holds and the attempt it runs."""

    job: Job
    entry: str
    attempt: int
    consumer: str


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


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    user = f"{parts.username}:***@" if parts.username else ":***@"
    netloc = user + host + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def shape_label(req: GenerationRequest) -> str:
    """The request shape ETAs are kept by: size, steps, CFG on/off, images."""
    return f"{req.width}x{req.height}:{req.steps}:{int(req.uses_cfg)}:{req.n}"


def rough_service_s(req: GenerationRequest) -> float:
    """A first guess before any job of this shape has run (as the local queue guesses)."""
    return 0.05 * req.steps * req.n * (req.width * req.height) / (256 * 256)


class RedisQueue:
    """The queue the HTTP routes see (the same methods as LocalQueue), plus the calls a
    worker process makes (take, heartbeat, publish_step, finish, requeue). Signatures say
    ``builtins.list`` because the method ``list`` hides the builtin in the class body."""

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
        self.url = url
        self.stream = stream
        self.group = group
        self.prefix = stream + ":"
        self.visibility_timeout_s = visibility_timeout_s
        self.max_attempts = max_attempts
        self.max_queue = max_queue
        self.hub = hub or EventHub()
        self.recorder = recorder or Recorder()
        self.retry_attempts = retry_attempts
        # Any: redis-py types every reply as a sync/async union; ours are str (decoded)
        self._r: Any = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=10.0, socket_connect_timeout=5.0,
            health_check_interval=15,
        )
        self._scripts = {
            name: self._r.register_script(_LUA_LIB + body)
            for name, body in (("submit", _SUBMIT), ("cancel", _CANCEL), ("start", _START),
                               ("step", _STEP), ("finish", _FINISH), ("requeue", _REQUEUE),
                               ("hello", _HELLO), ("workers", _WORKERS),
                               ("forget", _FORGET))
        }
        self._heartbeat = self._r.register_script(_HEARTBEAT)
        self._accepting = True
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self._cursor = "0-0"
        self._last_reclaim = 0.0
        self._cache: dict[str, tuple[float, Any]] = {}
        self.last_ok_mono = 0.0  # the last time Redis answered (readiness)
        self.connect(connect_attempts)

    @classmethod
    def from_settings(cls, settings: Any, **kwargs: Any) -> RedisQueue:
        return cls(
            settings.queue_url, stream=settings.stream, group=settings.group,
            visibility_timeout_s=settings.visibility_timeout_s,
            max_attempts=settings.max_attempts, max_queue=settings.max_queue, **kwargs,
        )

    # -- connection --------------------------------------------------------------------

    def connect(self, attempts: int) -> None:
        """Reach Redis and make sure the consumer group exists; retries with exponential
        backoff and a log line per attempt, then raises QueueUnavailable with the fix."""
        delay = 0.5
        for attempt in range(1, attempts + 1):
            try:
                info = self._r.info("server")
                self._ensure_group()
                break
            except UNREACHABLE as exc:
                if attempt == attempts:
                    raise QueueUnavailable(
                        f"cannot reach Redis at {redact(self.url)} after {attempts} attempts "
                        f"({exc}); start Redis there, or point --queue / STEADYGEN_QUEUE_URL "
                        "at a running one"
                    ) from exc
                log.warning("Redis at %s is not reachable (attempt %d of %d): %s; "
                            "retrying in %.1f s", redact(self.url), attempt, attempts, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
        version = tuple(int(x) for x in str(info.get("redis_version", "0.0")).split(".")[:2])
        if version < MIN_VERSION:
            raise QueueUnavailable(
                f"Redis at {redact(self.url)} is version {info.get('redis_version')}; "
                "steadygen needs 6.2 or later (7 or later for KEDA's lag-based scaling)"
            )
        try:
            appendonly = self._r.config_get("appendonly").get("appendonly")
        except ResponseError:  # managed services often refuse CONFIG
            appendonly = None
        if appendonly == "no":
            log.warning("Redis at %s runs without appendonly: accepted jobs are lost if it "
                        "restarts; set 'appendonly yes'", redact(self.url))
        self.last_ok_mono = time.monotonic()

    def _ensure_group(self) -> None:
        try:
            self._r.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _call(self, what: str, fn: Callable[[], T], attempts: int | None = None) -> T:
        """One Redis operation, retried a few times with backoff (each attempt logged);
        QueueUnavailable when Redis stays unreachable. Every script is safe to repeat."""
        attempts = attempts or self.retry_attempts
        delay = 0.2
        for attempt in range(1, attempts + 1):
            try:
                try:
                    out = fn()
                except ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    # Redis lost its data (no persistence?): set the group up again
                    log.warning("the consumer group %s is gone from Redis at %s; creating "
                                "it again", self.group, redact(self.url))
                    self._ensure_group()
                    out = fn()
                self.last_ok_mono = time.monotonic()
                return out
            except UNREACHABLE as exc:
                if attempt == attempts:
                    raise QueueUnavailable(
                        f"the job queue (Redis at {redact(self.url)}) cannot be reached "
                        f"to {what}: {exc}"
                    ) from exc
                log.warning("Redis at %s did not answer (%s, attempt %d of %d): %s; "
                            "retrying in %.1f s", redact(self.url), what, attempt, attempts,
                            exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")  # pragma: no cover

    def _cached(self, name: str, ttl_s: float, fn: Callable[[], T]) -> T:
        hit = self._cache.get(name)
        if hit is not None and time.monotonic() - hit[0] < ttl_s:
            return hit[1]
        value = fn()
        self._cache[name] = (time.monotonic(), value)
        return value

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    # -- lifecycle (API side) ----------------------------------------------------------

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
        self._r.close()

    def healthy(self, within_s: float = 10.0) -> bool:
        return time.monotonic() - self.last_ok_mono < within_s

    def _read_events(self) -> None:
        """XREAD BLOCK on the all-jobs event stream, each event into the EventHub (which
        hands it to asyncio subscribers). Reconnects with backoff, logging each attempt."""
        reader: Any = redis.Redis.from_url(
            self.url, decode_responses=True, socket_timeout=10.0, socket_connect_timeout=5.0)
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
            self.last_ok_mono = time.monotonic()
            for _stream, entries in got or []:
                for entry_id, f in entries:
                    last = entry_id
                    self.hub.publish(JobEvent(f["job"], int(f["a"]), int(f["n"]), f["type"],
                                              json.loads(f["data"])))
        reader.close()

    # -- the API side ------------------------------------------------------------------

    def submit(self, req: GenerationRequest, priority: int = 0) -> Job:
        if not self._accepting:
            raise QueueFull(self.max_queue, retry_after_s=30.0)
        job = Job(id=new_job_id(), request=req, priority=priority)
        out = self._call("submit a job", lambda: self._scripts["submit"](args=[
            self.prefix, self.stream, job.id, json.dumps(req.to_dict()), priority,
            self.max_queue]))
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
        out = self._call("cancel a job", lambda: self._scripts["cancel"](
            args=[self.prefix, job_id, HISTORY_TTL_S]))
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

    def workers(self) -> builtins.list[WorkerInfo]:
        """Workers that said hello recently (cached for 2 s)."""
        return self._cached("workers", 2.0, self._workers)

    def _workers(self) -> builtins.list[WorkerInfo]:
        out = self._call("list workers", lambda: self._scripts["workers"](
            args=[self.prefix, WORKER_FRESH_S]))
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

    # -- the worker side ---------------------------------------------------------------

    def take(self, consumer: str, block_s: float = 1.0) -> Claim | None:
        """The next job for ``consumer``: first one whose worker went silent for longer
        than the visibility timeout (XAUTOCLAIM), else a new one (XREADGROUP, blocking up
        to ``block_s``). None when there is nothing, or the entry needed no work."""
        entry: tuple[str, dict[str, str]] | None = None
        if time.monotonic() - self._last_reclaim >= min(1.0, self.visibility_timeout_s / 4):
            self._last_reclaim = time.monotonic()
            idle_ms = int(self.visibility_timeout_s * 1000)
            cursor, got, *_ = self._call("reclaim jobs", lambda: self._r.xautoclaim(
                self.stream, self.group, consumer, idle_ms, self._cursor, count=1))
            self._cursor = cursor
            if got:
                entry = got[0]
                log.warning("took over job %s (stream entry %s): its worker was silent for "
                            "more than %.0f s", entry[1].get("job"), entry[0],
                            self.visibility_timeout_s)
        if entry is None:
            got = self._call("read the stream", lambda: self._r.xreadgroup(
                self.group, consumer, {self.stream: ">"}, count=1,
                block=max(1, int(block_s * 1000))))
            if not got or not got[0][1]:
                return None
            entry = got[0][1][0]
        entry_id, fields = entry
        return self.start_job(consumer, entry_id, fields.get("job", ""))

    def start_job(self, consumer: str, entry: str, job_id: str) -> Claim | None:
        out = self._call("start a job", lambda: self._scripts["start"](args=[
            self.prefix, self.stream, self.group, job_id, entry, consumer, self.max_attempts,
            HISTORY_TTL_S]))
        if out[0] == "dead":
            log.error("job %s: %s", job_id, out[1])
        if out[0] != "run":
            return None
        flat = out[1]
        job = job_from_hash(dict(zip(flat[::2], flat[1::2], strict=True)))
        return Claim(job=job, entry=entry, attempt=job.attempts, consumer=consumer)

    def heartbeat(self, claim: Claim) -> tuple[bool, bool]:
        """Keep the claim alive. Returns (still ours, cancel requested)."""
        ours, cancel = self._call("renew a claim", lambda: self._heartbeat(args=[
            self.stream, self.group, claim.consumer, claim.entry, self.prefix, claim.job.id]))
        return bool(ours), bool(cancel)

    def publish_step(self, claim: Claim, data: dict[str, Any]) -> tuple[bool, bool]:
        """Record progress and send the step event (one try: progress is best effort, a
        step must not wait for Redis). Returns (still ours, cancel requested)."""
        ok, cancel = self._call("publish progress", lambda: self._scripts["step"](args=[
            self.prefix, claim.job.id, claim.consumer, claim.attempt, data.get("step", 0),
            data.get("steps", 0), data.get("eta_s", ""), json.dumps(data)]), attempts=1)
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
        won = self._call("record a result", lambda: self._scripts["finish"](args=[
            self.prefix, self.stream, self.group, claim.job.id, claim.consumer, claim.attempt,
            state.value, json.dumps(result) if result is not None else "", error or "",
            json.dumps(data), HISTORY_TTL_S]), attempts)
        return bool(won)

    def requeue(self, claim: Claim, error: str, *, handing_back: bool = False,
                attempts: int | None = None) -> bool:
        """Put the job back at the end of the stream (a failed attempt, or a stopping
        worker handing it back, which does not count as an attempt)."""
        data = {"attempt": claim.attempt, "error": error or None,
                "attempts_left": self.max_attempts - claim.attempt + int(handing_back)}
        done = self._call("requeue a job", lambda: self._scripts["requeue"](args=[
            self.prefix, self.stream, self.group, claim.job.id, claim.consumer, claim.attempt,
            error, json.dumps(data), int(handing_back)]), attempts)
        return bool(done)

    def hello(self, consumer: str, info: dict[str, Any]) -> None:
        """Say this worker is alive (and what it serves) to the API processes."""
        self._call("register the worker", lambda: self._scripts["hello"](args=[
            self.prefix, consumer, json.dumps(info)]))

    def goodbye(self, consumer: str) -> None:
        """Remove a stopping worker; its consumer goes too when it holds no entry."""
        def run() -> None:
            self._r.hdel(self._key("workers"), consumer)
            self._r.zrem(self._key("seen"), consumer)
            pending = self._r.xpending_range(self.stream, self.group, "-", "+", 1,
                                             consumername=consumer)
            if not pending:
                self._r.xgroup_delconsumer(self.stream, self.group, consumer)

        self._call("unregister the worker", run)

    def record_service_s(self, req: GenerationRequest, total_s: float) -> None:
        """Keep a moving mean of service time per request shape, for the API's ETAs."""
        key, label = self._key("service_s"), shape_label(req)
        old = self._call("read service times", lambda: self._r.hget(key, label))
        value = total_s if old is None else 0.8 * float(old) + 0.2 * total_s
        self._call("write service times", lambda: self._r.hset(key, label, f"{value:.4f}"))

    def tidy(self, idle_consumer_s: float = 3600.0, batch: int = 200) -> None:
        """Housekeeping any worker may run now and then: forget consumers that hold no
        entry and were idle for an hour, workers that stopped saying hello, and the oldest
        finished jobs whose history expired (so counts and lists stay right)."""
        def run() -> None:
            for c in self._r.xinfo_consumers(self.stream, self.group):
                idle_ms = int(c.get("idle", 0))
                if int(c.get("pending", 0)) == 0 and idle_ms > idle_consumer_s * 1000:
                    self._r.xgroup_delconsumer(self.stream, self.group, c["name"])
            self._scripts["forget"](args=[self.prefix, idle_consumer_s])
            for state in ("index", *(s.value for s in JobState if s.terminal)):
                key = self._key("index") if state == "index" else self._key("state", state)
                ids = self._r.zrange(key, 0, batch - 1)
                pipe = self._r.pipeline(transaction=False)
                for job_id in ids:
                    pipe.exists(self._key("job", job_id))
                gone = [i for i, there in zip(ids, pipe.execute(), strict=True) if not there]
                if gone:
                    self._r.zrem(key, *gone)

        self._call("tidy the consumer group", run)


def job_from_hash(raw: dict[str, str]) -> Job:
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


async def _next_terminal(sub: Subscription) -> JobEvent:
    while True:
        event = await sub.get()
        if event.terminal:
            return event
