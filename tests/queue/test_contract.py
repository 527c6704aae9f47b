"""The JobQueue contract (steadygen/queue/contract.py), checked promise by promise on both
backends: SQLite on a real database file, and Redis on a real redis-server. Jobs run on
the session's tiny engine through the real job worker (queue/worker.py) in this process,
so the worker loop is checked with each backend too.

A "restart" is a second queue object over the same storage, as a new process would open.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from steadygen.analysis.baseline import Baselines
from steadygen.errors import GenerationError, QueueFull, QueueUnavailable
from steadygen.queue.contract import JobQueue
from steadygen.queue.job import Job, JobState
from steadygen.queue.runner import RunContext
from steadygen.queue.sqlite.queue import SQLiteQueue
from steadygen.queue.sqlite.store import JobStore
from steadygen.queue.worker import JobWorker

from .redis_support import REDIS_SERVER, RedisServer

TIMEOUT_S = 120.0  # liveness only
VISIBILITY_S = 1.0  # Redis: a silent worker loses its job after this
FAIL_PROMPT = "fails on every attempt"


class Recording:
    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.finished: list[tuple[str, str]] = []
        self.rejected = 0

    def job_submitted(self, job: Job) -> None:
        self.submitted.append(job.id)

    def job_rejected(self) -> None:
        self.rejected += 1

    def job_finished(self, job: Job) -> None:
        self.finished.append((job.id, job.state.value))


def fail_on_purpose(job: Job) -> None:
    if job.request.prompt == FAIL_PROMPT:
        raise GenerationError("this job fails on purpose")


@dataclass
class Harness:
    """One backend's storage, the queue objects opened on it, and job worker threads."""

    kind: str
    open_queue: Callable[..., JobQueue]
    engine: Any
    images_dir: Path
    queues: list[JobQueue] = field(default_factory=list)
    workers: list[tuple[JobWorker, threading.Thread]] = field(default_factory=list)

    def queue(self, **kw: Any) -> JobQueue:
        queue = self.open_queue(**kw)
        self.queues.append(queue)
        return queue

    def start_worker(self, queue: JobQueue, name: str = "w1") -> JobWorker:
        queue.start()
        ctx = RunContext(engine=self.engine, images_dir=self.images_dir, baselines=Baselines())
        worker = JobWorker(queue, ctx, name, recorder=getattr(queue, "recorder", None),
                           check_job=fail_on_purpose, claim_block_s=0.2)
        thread = threading.Thread(target=worker.run_forever, daemon=True)
        thread.start()
        self.workers.append((worker, thread))
        return worker

    def stop_workers(self, grace_s: float = TIMEOUT_S) -> None:
        for worker, _ in self.workers:
            worker.request_stop(grace_s)
        for queue in self.queues:
            queue.stop(0.0)
        for _, thread in self.workers:
            thread.join(grace_s + 10)
        self.workers.clear()

    def close(self) -> None:
        self.stop_workers(0.0)
        for queue in self.queues:
            closer = getattr(queue, "close", None) or queue.store.close
            closer()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer | None]:
    if REDIS_SERVER is None:
        yield None
        return
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest, engine: Any, tmp_path: Path,
            redis_server: RedisServer | None) -> Iterator[Harness]:
    if request.param == "sqlite":
        def open_queue(max_queue: int = 8, max_attempts: int = 2) -> JobQueue:
            return SQLiteQueue(JobStore(tmp_path / "jobs.sqlite3"), max_queue=max_queue,
                               max_attempts=max_attempts, recorder=Recording())
    else:
        if redis_server is None:
            pytest.skip("needs the redis-server binary (Debian package redis-server)")
        from steadygen.queue.redis.queue import RedisQueue

        stream = f"t{secrets.token_hex(4)}:jobs"

        def open_queue(max_queue: int = 8, max_attempts: int = 2) -> JobQueue:
            return RedisQueue(redis_server.url, stream=stream, group="workers",
                              visibility_timeout_s=VISIBILITY_S, max_attempts=max_attempts,
                              max_queue=max_queue, recorder=Recording())

    harness = Harness(request.param, open_queue, engine, tmp_path / "images")
    yield harness
    harness.close()


def wait_until(check: Callable[[], Any], what: str, timeout_s: float = TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.02)


def wait_done(queue: JobQueue, *ids: str) -> list[Job]:
    wait_until(lambda: all(queue.get(i).state.terminal for i in ids), f"jobs {ids} to end")
    return [queue.get(i) for i in ids]


def kinds(queue: JobQueue, job_id: str) -> list[str]:
    return [e.type for e in queue.events_since(job_id, (-1, -1))]


# -- the promises ------------------------------------------------------------------------


def test_an_accepted_job_is_durable_before_submit_returns(backend: Harness,
                                                          make_req: Any) -> None:
    first = backend.queue()
    job = first.submit(make_req(steps=1))
    again = backend.queue()  # another process, opened on the same storage
    stored = again.get(job.id)
    assert stored.state is JobState.QUEUED and stored.request == job.request
    assert kinds(again, job.id) == ["queued"]
    assert again.depth() == 1 and again.counts()["queued"] == 1


def test_jobs_start_by_priority_then_arrival_and_positions_say_so(
    backend: Harness, make_req: Any
) -> None:
    queue = backend.queue()
    a = queue.submit(make_req(steps=1, seed=1))
    b = queue.submit(make_req(steps=1, seed=2))
    c = queue.submit(make_req(steps=1, seed=3), priority=5)
    d = queue.submit(make_req(steps=1, seed=4), priority=-1)
    e = queue.submit(make_req(steps=1, seed=5))
    order = [c, a, b, e, d]
    assert [queue.position(queue.get(j.id)) for j in order] == [0, 1, 2, 3, 4]
    etas = [queue.eta_s(queue.get(j.id)) or 0.0 for j in order]
    assert all(x > 0 for x in etas) and etas == sorted(etas)  # more work ahead, later
    backend.start_worker(queue)
    done = wait_done(queue, *(j.id for j in order))
    started = sorted(done, key=lambda j: j.started_at or 0.0)
    assert [j.id for j in started] == [j.id for j in order]
    assert all(j.state is JobState.SUCCEEDED and j.attempts == 1 for j in done)
    assert all(queue.eta_s(j) == 0.0 for j in done)


def test_waiting_jobs_hear_their_new_position_when_one_starts(
    backend: Harness, make_req: Any
) -> None:
    queue = backend.queue()
    ids = [queue.submit(make_req(steps=2, seed=s)).id for s in range(3)]
    backend.start_worker(queue)
    wait_done(queue, *ids)
    events = queue.events_since(ids[-1], (-1, -1))
    positions = [e.data["position"] for e in events if e.type == "queued"]
    assert positions[0] == 2 and positions[-1] == 0, positions  # moved up as each started
    assert positions == sorted(positions, reverse=True)
    assert all(e.data.get("eta_s", 1) > 0 for e in events if e.type == "queued")
    assert [e.key for e in events] == sorted(e.key for e in events)


def test_a_cancelled_queued_job_never_runs(backend: Harness, make_req: Any) -> None:
    queue = backend.queue()
    a = queue.submit(make_req(steps=1, seed=1))
    b = queue.submit(make_req(steps=1, seed=2))
    assert queue.cancel(b.id).state is JobState.CANCELLED
    backend.start_worker(queue)
    wait_done(queue, a.id)
    gone = queue.get(b.id)
    assert gone.state is JobState.CANCELLED and gone.started_at is None
    assert kinds(queue, b.id) == ["queued", "cancelled"]
    assert kinds(queue, a.id)[-1] == "succeeded"
    recorder = queue.recorder
    wait_until(lambda: len(recorder.finished) == 2, "the recorder to hear of both ends")
    assert sorted(recorder.finished) == sorted([(a.id, "succeeded"), (b.id, "cancelled")])


def test_a_running_job_cancels_at_a_step_boundary(backend: Harness, make_req: Any) -> None:
    queue = backend.queue()
    backend.start_worker(queue)
    job = queue.submit(make_req(steps=100, seed=6))
    wait_until(lambda: any(p.job_id == job.id and p.step >= 1 for p in queue.running()),
               "a step")
    queue.cancel(job.id)
    (final,) = wait_done(queue, job.id)
    assert final.state is JobState.CANCELLED and final.cancel_requested
    last = queue.events_since(job.id, (-1, -1))[-1]
    assert last.type == "cancelled" and 1 <= last.data["at_step"] < 100
    wait_until(lambda: queue.running() == [], "the running list to empty")


def test_a_job_whose_worker_died_runs_again(backend: Harness, make_req: Any) -> None:
    queue = backend.queue()
    job = queue.submit(make_req(steps=1, seed=7))
    claim = queue.claim("a-worker-that-dies", 1.0)
    assert claim is not None and claim.job.id == job.id and claim.attempt == 1
    # The worker dies here: no heartbeat, no end. A new process (local: the restart that
    # requeues it; Redis: any worker, once the claim's visibility timeout has passed).
    survivor = backend.queue()
    backend.start_worker(survivor, "survivor")
    (final,) = wait_done(survivor, job.id)
    assert final.state is JobState.SUCCEEDED and final.attempts == 2
    assert kinds(survivor, job.id).count("started") == 2
    # The dead worker's late end changes nothing: the first terminal write won.
    assert queue.finish(claim, JobState.FAILED, {"error": "late"}, error="late") is False
    assert survivor.get(job.id).state is JobState.SUCCEEDED


def test_a_job_that_keeps_failing_is_dead_lettered(backend: Harness, make_req: Any) -> None:
    queue = backend.queue(max_attempts=2)
    job = queue.submit(make_req(prompt=FAIL_PROMPT, steps=1, seed=8))
    ok = queue.submit(make_req(steps=1, seed=9))
    backend.start_worker(queue)
    failed, fine = wait_done(queue, job.id, ok.id)
    assert failed.state is JobState.FAILED and failed.attempts == 2
    assert failed.error and failed.error.startswith("dead letter: failed on all 2 attempts")
    assert "fails on purpose" in failed.error
    assert (failed.result or {}).get("dead_letter") is True
    assert failed.to_public()["dead_letter"] is True
    assert kinds(queue, job.id).count("requeued") == 1
    last = queue.events_since(job.id, (-1, -1))[-1]
    assert last.type == "failed" and last.data["dead_letter"] is True
    assert fine.state is JobState.SUCCEEDED  # the worker lives on


def test_a_job_whose_workers_keep_dying_is_dead_lettered(backend: Harness,
                                                         make_req: Any) -> None:
    job = backend.queue(max_attempts=2).submit(make_req(steps=1, seed=10))
    for attempt in (1, 2):
        queue = backend.queue(max_attempts=2)  # each attempt in a new process
        queue.start()  # local: requeues what the previous process left running

        def claimed(q: JobQueue = queue, n: int = attempt) -> Any:
            return q.claim(f"dies-{n}", 0.2)

        claim = wait_until(claimed, f"attempt {attempt} to be claimed", 30)
        assert claim.attempt == attempt
    last = backend.queue(max_attempts=2)
    last.start()
    assert wait_until(lambda: last.claim("third", 0.2) is None and
                      last.get(job.id).state.terminal, "the dead letter", 30)
    final = last.get(job.id)
    assert final.state is JobState.FAILED and (final.result or {}).get("dead_letter")
    assert final.error and "started 2 times without finishing" in final.error


def test_events_resume_after_an_id_and_survive_a_restart(backend: Harness,
                                                         make_req: Any) -> None:
    queue = backend.queue()
    backend.start_worker(queue)
    job = queue.submit(make_req(steps=3, seed=11))
    wait_done(queue, job.id)
    events = queue.events_since(job.id, (-1, -1))
    assert [e.type for e in events] == ["queued", "started", "step", "step", "step",
                                        "succeeded"]
    assert [e.id for e in events][:2] == ["0.0", "1.0"]
    middle = events[2]
    assert [e.key for e in queue.events_since(job.id, middle.key)] == \
        [e.key for e in events[3:]]
    assert events[-1].data["result"]["images"] == [f"/v1/jobs/{job.id}/images/0.png"]
    backend.stop_workers()
    again = backend.queue()  # after a restart, the lifecycle is still there
    stored = [e.type for e in again.events_since(job.id, (-1, -1))]
    assert stored[0] == "queued" and stored[-1] == "succeeded" and "started" in stored


def test_wait_returns_the_finished_job(backend: Harness, make_req: Any) -> None:
    queue = backend.queue()
    backend.start_worker(queue)
    job = queue.submit(make_req(steps=2, seed=12))

    async def follow() -> Job:
        return await asyncio.wait_for(queue.wait(job.id), TIMEOUT_S)

    finished = asyncio.run(follow())
    assert finished.id == job.id and finished.state is JobState.SUCCEEDED


def test_past_max_queue_submit_is_refused_and_while_stopping_it_is_unavailable(
    backend: Harness, make_req: Any
) -> None:
    queue = backend.queue(max_queue=2)  # no worker: nothing leaves the queue
    queue.submit(make_req())
    queue.submit(make_req())
    with pytest.raises(QueueFull) as caught:
        queue.submit(make_req())
    assert caught.value.retry_after_s >= 1
    assert queue.depth() == 2 and queue.recorder.rejected == 1
    queue.stop_accepting()
    assert not queue.accepting
    with pytest.raises(QueueUnavailable, match="shutting down"):
        queue.submit(make_req())


def test_a_finish_is_written_once(backend: Harness, make_req: Any) -> None:
    queue = backend.queue()
    job = queue.submit(make_req(steps=1))
    claim = queue.claim("w", 1.0)
    assert claim is not None and claim.job.id == job.id
    assert queue.get(job.id).state is JobState.RUNNING
    assert queue.finish(claim, JobState.SUCCEEDED, {"result": {}}, result={"images": []})
    assert not queue.finish(claim, JobState.SUCCEEDED, {"result": {}}, result={"images": []})
    assert kinds(queue, job.id) == ["queued", "started", "succeeded"]


def test_a_running_job_counts_in_the_eta_behind_it_before_its_first_step(
    backend: Harness, make_req: Any
) -> None:
    queue = backend.queue()
    running = queue.submit(make_req(steps=12, seed=13))
    claim = queue.claim("w", 1.0)
    assert claim is not None
    expected = queue.eta_s(queue.get(running.id))
    assert expected is not None and expected > 0
    queue.set_expected(claim, expected)
    behind = queue.submit(make_req(steps=1, seed=14))
    # The running job's whole service is ahead (Redis: once the progress read is fresh).
    own = wait_until(lambda: (eta := queue.eta_s(queue.get(behind.id))) > expected and eta,
                     "the running job to count in the ETA", 10)
    queue.progress(claim, {"step": 6, "steps": 12, "eta_s": 0.5})
    wait_until(lambda: queue.eta_s(queue.get(behind.id)) < own, "the ETA to follow progress",
               10)


def test_a_stopping_worker_hands_its_job_back(backend: Harness, make_req: Any) -> None:
    queue = backend.queue()
    worker = backend.start_worker(queue)
    job = queue.submit(make_req(steps=100, seed=15))
    wait_until(lambda: any(p.job_id == job.id and p.step >= 1 for p in queue.running()),
               "a step")
    worker.request_stop(0.0)  # no grace: stopped at its next step and handed back
    wait_until(lambda: queue.get(job.id).state is JobState.QUEUED, "the hand back")
    back = queue.get(job.id)
    assert back.attempts == 0  # handing back is not an attempt
    assert kinds(queue, job.id)[-1] == "requeued"
    assert "cancelled" not in kinds(queue, job.id)
    # It runs its first attempt again, and its events keep unique, ordered ids.
    backend.stop_workers(0.0)
    again = backend.queue()
    backend.start_worker(again, "w2")
    again.cancel(wait_until(lambda: next((p.job_id for p in again.running() if p.step >= 1),
                                         None), "the job to run again"))
    (final,) = wait_done(again, job.id)
    assert final.state is JobState.CANCELLED and final.attempts == 1
    events = again.events_since(job.id, (-1, -1))
    assert [e.data["attempt"] for e in events if e.type == "started"] == [1, 1]
    keys = [e.key for e in events]
    assert keys == sorted(set(keys))


def test_a_queue_outage_or_a_worker_bug_around_a_job_never_leaves_it_held(
    backend: Harness, make_req: Any
) -> None:
    # The queue is unreachable while the worker announces positions at a job's start (a
    # best-effort report: the job runs), and the worker's own bookkeeping raises before
    # another job runs (a bug: that attempt fails and the job runs again). Neither job may be
    # left held by the live worker, where nothing would ever run it.
    queue = backend.queue()
    announce, set_expected = queue.announce_positions, queue.set_expected
    calls = {"announce": 0, "expected": 0}

    def flaky_announce() -> None:
        calls["announce"] += 1
        if calls["announce"] == 1:
            raise QueueUnavailable("the job queue went away for a moment")
        announce()

    def buggy_set_expected(claim: Any, eta_s: float) -> None:
        calls["expected"] += 1
        if calls["expected"] == 2:
            raise RuntimeError("a bug in the worker's bookkeeping")
        set_expected(claim, eta_s)

    queue.announce_positions = flaky_announce  # type: ignore[method-assign]
    queue.set_expected = buggy_set_expected  # type: ignore[method-assign]
    first = queue.submit(make_req(steps=1, seed=1))
    backend.start_worker(queue)
    [done] = wait_done(queue, first.id)
    assert done.state is JobState.SUCCEEDED and done.attempts == 1  # the outage cost nothing
    second = queue.submit(make_req(steps=1, seed=2))
    [done] = wait_done(queue, second.id)
    assert done.state is JobState.SUCCEEDED and done.attempts == 2, done
    assert "requeued" in kinds(queue, second.id)
    assert calls == {"announce": 2, "expected": 3}  # the buggy attempt stopped before announcing
    # and no claim is renewed for a job no longer in hand (a renewal would keep it held)
    renewals = {f"steadygen-lease-{first.id}", f"steadygen-lease-{second.id}"}
    wait_until(lambda: not [t for t in threading.enumerate()
                            if t.name in renewals and t.is_alive()],
               "the claims' renewals to stop", timeout_s=10)


def test_failures_of_the_job_itself_are_final_and_others_are_retried() -> None:
    from steadygen.errors import InvalidRequest, OutOfMemory, StorageError
    from steadygen.queue.worker import classify_failure

    def wrapped(cause: Exception) -> GenerationError:
        try:
            raise GenerationError(f"generation failed: {cause}") from cause
        except GenerationError as exc:
            return exc

    assert classify_failure(OutOfMemory("out of memory")) == ("out of memory", False)
    assert classify_failure(InvalidRequest([]))[1] is False
    assert classify_failure(wrapped(StorageError("cannot write x.png")))[1] is False
    assert classify_failure(GenerationError("generation failed: CUDA error")) == (
        "generation failed: CUDA error", True)
    assert classify_failure(KeyError("k")) == ("internal error: KeyError: 'k'", True)
