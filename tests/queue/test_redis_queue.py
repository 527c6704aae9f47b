"""RedisQueue against a real redis-server, in one process: the API side
(submit, list, cancel, events, wait) and the worker side (take, heartbeat, reclaim, finish,
requeue) with no engine. The multi-process behaviour is in test_redis_workers.py."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from steadygen.errors import JobNotFound, QueueFull, QueueUnavailable
from steadygen.queue.contract import LeaseState
from steadygen.queue.job import JobState
from steadygen.queue.redis.queue import RedisQueue
from steadygen.request import GenerationRequest

from .redis_support import RedisServer, free_port, needs_redis, wait_for

pytestmark = [needs_redis, pytest.mark.redis]

VISIBILITY_S = 0.6


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


def make_queue(url: str, stream: str | None = None, **kw: object) -> RedisQueue:
    opts: dict[str, object] = {"visibility_timeout_s": VISIBILITY_S, "max_attempts": 2,
                               "max_queue": 8, "group": "workers"}
    opts.update(kw)
    return RedisQueue(url, stream=stream or f"t{secrets.token_hex(4)}:jobs", **opts)  # type: ignore[arg-type]


@pytest.fixture
def queue(redis_server: RedisServer) -> Iterator[RedisQueue]:
    q = make_queue(redis_server.url)
    yield q
    q.close()


def req(prompt: str = "a lighthouse", steps: int = 4) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, width=256, height=256, steps=steps, guidance=0.0,
                             seed=1, n=1, model="zimage-tiny")


def kinds(q: RedisQueue, job_id: str) -> list[tuple[str, str]]:
    return [(e.id, e.type) for e in q.events_since(job_id, (-1, -1))]


def test_submit_get_list_counts_position(queue: RedisQueue) -> None:
    jobs = [queue.submit(req(f"p{i}"), priority=i) for i in range(3)]
    got = queue.get(jobs[1].id)
    assert got.state is JobState.QUEUED and got.request == req("p1") and got.priority == 1
    assert got.seq == jobs[1].seq and got.created_at > 0
    assert [j.id for j in queue.list(10)] == [j.id for j in reversed(jobs)]
    assert queue.counts()["queued"] == 3 and queue.depth() == 3
    assert [queue.position(j) for j in jobs] == [2, 1, 0]  # higher priority first
    assert queue.eta_s(jobs[0]) > queue.eta_s(jobs[2]) > 0
    assert kinds(queue, jobs[0].id) == [("0.0", "queued")]
    with pytest.raises(JobNotFound):
        queue.get("j-nothing")


def test_full_queue_refuses(redis_server: RedisServer) -> None:
    q = make_queue(redis_server.url, max_queue=2)
    q.submit(req())
    q.submit(req())
    with pytest.raises(QueueFull):
        q.submit(req())
    q.close()


def test_cancel_queued_job_is_dropped_by_the_worker(queue: RedisQueue) -> None:
    job = queue.submit(req())
    assert queue.cancel(job.id).state is JobState.CANCELLED
    assert kinds(queue, job.id) == [("0.0", "queued"), ("0.1", "cancelled")]
    assert queue.claim("w1", 0.05) is None  # read, seen cancelled, acknowledged
    stats = queue.stats()
    assert (stats.stream_length, stats.pending, stats.lag) == (0, 0, 0)


def test_cancel_running_job_reaches_its_worker(queue: RedisQueue) -> None:
    job = queue.submit(req())
    claim = queue.claim("w1", 0.05)
    assert claim is not None and claim.attempt == 1
    assert queue.progress(claim, {"step": 1, "steps": 4, "eta_s": 0.3}) == LeaseState(True, False)
    assert queue.cancel(job.id).cancel_requested
    assert queue.progress(claim, {"step": 2, "steps": 4}) == LeaseState(True, True)
    assert queue.heartbeat(claim) == LeaseState(True, True)
    assert queue.finish(claim, JobState.CANCELLED, {"at_step": 2})
    assert queue.get(job.id).state is JobState.CANCELLED
    assert [k for _, k in kinds(queue, job.id)] == ["queued", "started", "step", "step",
                                                   "cancelled"]


def test_heartbeat_keeps_a_long_job_and_silence_loses_it(
    queue: RedisQueue,
) -> None:
    job = queue.submit(req())
    claim = queue.claim("w1", 0.05)
    assert claim is not None
    for _ in range(4):  # past the visibility timeout, renewing
        time.sleep(VISIBILITY_S / 3)
        assert queue.heartbeat(claim) == LeaseState(True, False)
        assert queue.claim("w2", 0.05) is None
    time.sleep(VISIBILITY_S * 1.3)  # silent: w2 takes it over
    queue._last_reclaim = 0.0
    taken = queue.claim("w2", 0.05)
    assert taken is not None and taken.job.id == job.id and taken.attempt == 2
    assert queue.heartbeat(claim) == LeaseState(False, False)
    assert queue.progress(claim, {"step": 3, "steps": 4}).ours is False  # fenced off
    # the old worker finishes first after all: the first terminal write wins
    assert queue.finish(claim, JobState.SUCCEEDED, {"result": {}}, result={"images": []})
    assert not queue.finish(taken, JobState.SUCCEEDED, {"result": {}}, result={"images": []})
    assert not queue.finish(taken, JobState.FAILED, {"error": "x"}, error="x")
    done = queue.get(job.id)
    assert done.state is JobState.SUCCEEDED and done.attempts == 2
    events = kinds(queue, job.id)
    assert [k for _, k in events].count("succeeded") == 1
    assert events[-1] == ("2.1", "succeeded")  # after attempt 2's 'started'
    stats = queue.stats()
    assert (stats.stream_length, stats.pending, stats.lag) == (0, 0, 0)


def test_failed_attempt_is_requeued_then_dead_lettered(
    queue: RedisQueue,
) -> None:
    job = queue.submit(req())
    first = queue.claim("w1", 0.05)
    assert first is not None
    assert queue.retry(first, "boom")
    assert queue.get(job.id).state is JobState.QUEUED
    assert not queue.retry(first, "again")  # not running any more: ignored
    second = queue.claim("w2", 0.05)
    assert second is not None and second.attempt == 2
    assert queue.finish(second, JobState.FAILED, {"error": "dead", "dead_letter": True},
                        result={"dead_letter": True}, error="dead letter: boom twice")
    failed = queue.list(10, JobState.FAILED)
    assert [j.id for j in failed] == [job.id]
    assert failed[0].result == {"dead_letter": True} and failed[0].attempts == 2
    assert [k for _, k in kinds(queue, job.id)] == ["queued", "started", "requeued", "started",
                                                   "failed"]


def test_job_whose_workers_keep_dying_is_dead_lettered(
    queue: RedisQueue,
) -> None:
    job = queue.submit(req())
    assert queue.claim("w1", 0.05) is not None  # then w1 dies
    time.sleep(VISIBILITY_S * 1.3)
    queue._last_reclaim = 0.0
    assert queue.claim("w2", 0.05) is not None  # attempt 2, and w2 dies too
    time.sleep(VISIBILITY_S * 1.3)
    queue._last_reclaim = 0.0
    assert queue.claim("w3", 0.05) is None
    dead = queue.get(job.id)
    assert dead.state is JobState.FAILED and dead.result == {"dead_letter": True}
    assert dead.error and dead.error.startswith("dead letter: started 2 times")
    assert queue.stats().pending == 0


def test_events_reach_subscribers_and_wait_returns(queue: RedisQueue) -> None:
    queue.start()
    job = queue.submit(req())

    async def follow() -> list[str]:
        seen: list[str] = []
        with queue.open_events(job.id) as sub:
            waiter = asyncio.ensure_future(queue.wait(job.id))
            await asyncio.sleep(0.3)
            claim = await asyncio.to_thread(queue.claim, "w1", 0.05)
            assert claim is not None
            for step in (1, 2):
                await asyncio.to_thread(queue.progress, claim,
                                        {"step": step, "steps": 4, "eta_s": 0.1})
            await asyncio.to_thread(queue.finish, claim, JobState.SUCCEEDED,
                                    {"result": {"images": []}}, result={"images": []})
            while not seen or seen[-1] != "succeeded":
                event = await asyncio.wait_for(sub.get(), timeout=10)
                seen.append(event.type)
            done = await asyncio.wait_for(waiter, timeout=10)
            assert done.state is JobState.SUCCEEDED
        return seen

    assert asyncio.run(follow()) == ["started", "step", "step", "succeeded"]
    resumed = queue.events_since(job.id, (1, 1))  # after the first step
    assert [(e.id, e.type) for e in resumed] == [("1.2", "step"), ("1.3", "succeeded")]


def test_running_progress_and_workers(queue: RedisQueue) -> None:
    job = queue.submit(req(steps=8))
    claim = queue.claim("w1", 0.05)
    assert claim is not None
    queue.progress(claim, {"step": 3, "steps": 8, "eta_s": 1.5})
    queue._cache.clear()
    [p] = queue.running()
    assert (p.job_id, p.step, p.steps, p.eta_s) == (job.id, 3, 8, 1.5)
    assert queue.eta_s(queue.get(job.id)) == 1.5
    queue.hello("w1", {"model": "zimage-tiny", "default_side": 256})
    queue._cache.clear()
    [w] = queue.workers()
    assert w.consumer == "w1" and w.info["model"] == "zimage-tiny" and w.seen_s_ago < 5
    assert queue.stats().workers == 1 and queue.stats().pending == 1


def test_tidy_forgets_expired_jobs_and_gone_consumers(queue: RedisQueue) -> None:
    done = queue.submit(req())
    claim = queue.claim("w1", 0.05)
    assert claim is not None
    queue.finish(claim, JobState.SUCCEEDED, {"result": {}}, result={"images": []})
    queue.hello("w1", {})
    queue.conn.client.delete(queue.conn.key("job", done.id))  # as if its history had expired
    queue.tidy(idle_consumer_s=0)
    assert queue.counts()["succeeded"] == 0 and queue.list(10) == []
    assert queue.conn.client.xinfo_consumers(queue.stream, "workers") == []
    assert queue._workers() == []


def test_unreachable_redis_is_a_clear_error(caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    caplog.set_level(logging.WARNING, logger="steadygen.queue.redis")
    with pytest.raises(QueueUnavailable, match="cannot reach Redis at .* after 2 attempts"):
        make_queue(url, connect_attempts=2)
    assert sum("reaching Redis at" in r.message and "(attempt 1 of 2)" in r.message
               for r in caplog.records) == 1


def test_accepted_jobs_survive_a_redis_crash(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        q = make_queue(server.url, retry_attempts=2)
        ids = [q.submit(req(f"p{i}")).id for i in range(5)]
        server.kill()  # SIGKILL: append-only with fsync always keeps what was acknowledged
        caplog.set_level(logging.WARNING, logger="steadygen.queue.redis")
        with pytest.raises(QueueUnavailable, match="cannot be reached to submit a job"):
            q.submit(req())
        assert any("(submit a job) failed (attempt 1 of 2)" in r.message
                   for r in caplog.records)
        server.start()
        wait_for(lambda: q.depth() == 5, 10, "the queue to come back")
        taken = [q.claim("w1", 0.05) for _ in range(5)]
        assert [c.job.id for c in taken if c] == ids
        q.close()
    finally:
        server.stop()
