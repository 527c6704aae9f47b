"""LocalQueue with the real tiny engine in this process: order, cancel, ETA, wait, limits,
stop and restart."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from steadygen.analysis.baseline import Baselines
from steadygen.errors import QueueFull, QueueUnavailable
from steadygen.queue.job import Job, JobState
from steadygen.queue.local import LocalQueue, Recorder
from steadygen.queue.runner import RunContext
from steadygen.queue.store import JobStore

TIMEOUT_S = 240.0  # liveness only


class Recording(Recorder):
    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.finished: list[tuple[str, str]] = []
        self.rejected = 0

    def job_submitted(self, job: Job) -> None:
        self.submitted.append(job.id)

    def job_finished(self, job: Job) -> None:
        self.finished.append((job.id, job.state.value))

    def job_rejected(self) -> None:
        self.rejected += 1


@pytest.fixture
def make_queue(engine: Any, tmp_path: Path) -> Iterator[Callable[..., LocalQueue]]:
    """``make_queue(max_queue=8)``: a LocalQueue on the session's tiny engine and a store of
    its own on the test's database (a second one is a restart), not yet started; all are
    stopped and closed afterwards."""
    made: list[LocalQueue] = []

    def make(max_queue: int = 8) -> LocalQueue:
        store = JobStore(tmp_path / "jobs.sqlite3")
        ctx = RunContext(engine=engine, images_dir=tmp_path / "images", baselines=Baselines())
        queue = LocalQueue(store, [ctx], max_queue=max_queue, recorder=Recording())
        made.append(queue)
        return queue

    yield make
    for queue in made:
        queue.stop(30.0)
        queue.store.close()


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.01)


def wait_done(queue: LocalQueue, *ids: str) -> list[Job]:
    wait_until(lambda: all(queue.get(i).state.terminal for i in ids), f"jobs {ids} to end")
    return [queue.get(i) for i in ids]


def wait_step(queue: LocalQueue, job_id: str) -> int:
    def stepped() -> bool:
        return any(p.job_id == job_id and p.step >= 1 for p in queue.running())

    wait_until(stepped, f"job {job_id} to finish a step")
    return next(p.step for p in queue.running() if p.job_id == job_id)


def test_priority_then_arrival_and_a_cancelled_queued_job_never_runs(
    make_queue: Callable[..., LocalQueue], make_req: Any, tmp_path: Path
) -> None:
    queue = make_queue()
    a = queue.submit(make_req(steps=1, seed=1))
    b = queue.submit(make_req(steps=1, seed=2))
    c = queue.submit(make_req(steps=1, seed=3), priority=5)
    d = queue.submit(make_req(steps=1, seed=4))
    assert [queue.position(queue.get(j.id)) for j in (c, a, b, d)] == [0, 1, 2, 3]
    etas = [queue.eta_s(queue.get(j.id)) or 0.0 for j in (c, a, b, d)]
    assert all(e > 0 for e in etas)
    assert etas == sorted(etas) and etas[0] < etas[-1]  # more work ahead, later

    cancelled = queue.cancel(b.id)
    assert cancelled.state is JobState.CANCELLED
    queue.start()
    done = wait_done(queue, a.id, b.id, c.id, d.id)
    by_id = {j.id: j for j in done}
    ran = sorted((j for j in done if j.started_at), key=lambda j: j.started_at or 0)
    assert [j.id for j in ran] == [c.id, a.id, d.id]
    assert by_id[b.id].started_at is None and by_id[b.id].attempts == 0
    assert [e.type for e in queue.store.events(b.id)] == ["queued", "cancelled"]
    for job in ran:
        assert job.state is JobState.SUCCEEDED and job.attempts == 1
        assert job.result is not None
        assert [(tmp_path / "images" / p).is_file() for p in job.result["images"]] == [True]
        assert [e.type for e in queue.store.events(job.id)] == ["queued", "started",
                                                               "succeeded"]
    recorder = queue.recorder
    assert isinstance(recorder, Recording)
    assert recorder.submitted == [a.id, b.id, c.id, d.id]
    # The recorder hears of a job just after the store records its end.
    wait_until(lambda: len(recorder.finished) == 4, "the recorder to hear of every job")
    assert sorted(recorder.finished) == sorted(
        [(b.id, "cancelled"), (c.id, "succeeded"), (a.id, "succeeded"), (d.id, "succeeded")]
    )


def test_cancel_a_running_job_at_a_step_boundary(
    make_queue: Callable[..., LocalQueue], make_req: Any
) -> None:
    queue = make_queue()
    queue.start()
    job = queue.submit(make_req(steps=100, seed=5))
    wait_step(queue, job.id)
    queue.cancel(job.id)
    (final,) = wait_done(queue, job.id)
    assert final.state is JobState.CANCELLED and final.cancel_requested
    last = queue.events_since(job.id, (-1, -1))[-1]
    assert last.type == "cancelled" and 1 <= last.data["at_step"] < 100
    assert queue.running() == []


def test_eta_decreases_as_steps_complete(
    make_queue: Callable[..., LocalQueue], make_req: Any
) -> None:
    queue = make_queue()
    warm = queue.submit(make_req(steps=12, seed=6))  # gives the baseline one warm run
    queue.start()
    wait_done(queue, warm.id)
    job = queue.submit(make_req(steps=12, seed=7))
    at_submit = queue.eta_s(job)
    assert at_submit is not None and at_submit > 0
    (final,) = wait_done(queue, job.id)
    assert final.state is JobState.SUCCEEDED
    etas = [e.data["eta_s"] for e in queue.events_since(job.id, (-1, -1)) if e.type == "step"]
    assert len(etas) == 12
    assert etas[-1] < etas[len(etas) // 2] < etas[0]
    assert queue.eta_s(final) == 0.0


def test_wait_returns_the_finished_job(
    make_queue: Callable[..., LocalQueue], make_req: Any
) -> None:
    queue = make_queue()
    queue.start()
    job = queue.submit(make_req(steps=2, seed=8))
    finished = asyncio.run(asyncio.wait_for(queue.wait(job.id), TIMEOUT_S))
    assert finished.id == job.id and finished.state is JobState.SUCCEEDED


def test_past_max_queue_submit_raises_queue_full(
    make_queue: Callable[..., LocalQueue], make_req: Any
) -> None:
    queue = make_queue(max_queue=2)  # not started: nothing leaves the queue
    queue.submit(make_req())
    queue.submit(make_req())
    with pytest.raises(QueueFull) as caught:
        queue.submit(make_req())
    assert caught.value.retry_after_s >= 1
    assert queue.depth() == 2
    assert isinstance(queue.recorder, Recording) and queue.recorder.rejected == 1


def test_stop_lets_the_running_job_finish_and_leaves_queued_jobs_queued(
    make_queue: Callable[..., LocalQueue], make_req: Any
) -> None:
    queue = make_queue()
    queue.start()
    running = queue.submit(make_req(steps=30, seed=9))
    waiting = [queue.submit(make_req(steps=1, seed=s)) for s in (10, 11)]
    wait_step(queue, running.id)
    assert queue.stop(grace_s=TIMEOUT_S) is True
    assert queue.get(running.id).state is JobState.SUCCEEDED
    assert [queue.get(j.id).state for j in waiting] == [JobState.QUEUED] * 2
    with pytest.raises(QueueUnavailable):
        queue.submit(make_req())  # no longer accepting


def test_stop_past_the_grace_period_keeps_the_job_for_the_restart(
    make_queue: Callable[..., LocalQueue], make_req: Any
) -> None:
    queue = make_queue()
    queue.start()
    job = queue.submit(make_req(steps=100, seed=12))
    wait_step(queue, job.id)
    assert queue.stop(grace_s=0.0) is True  # the job is stopped at its next step
    left = queue.get(job.id)
    assert left.state is JobState.RUNNING and left.attempts == 1
    assert "cancelled" not in [e.type for e in queue.store.events(job.id)]

    restarted = make_queue()  # the same database, as after a restart
    restarted.start()  # requeues the job; it runs again from its start
    wait_until(lambda: restarted.get(job.id).attempts == 2, "the second attempt")
    restarted.cancel(job.id)
    (final,) = wait_done(restarted, job.id)
    assert final.state is JobState.CANCELLED and final.attempts == 2
    assert [e.type for e in restarted.store.events(job.id)].count("started") == 2


def test_a_running_job_counts_in_the_eta_behind_it_before_its_first_step(
    make_queue: Callable[..., LocalQueue], make_req: Any, engine: Any
) -> None:
    from steadygen.queue.runner import expected_service_s

    release = threading.Event()
    engine.fault_hook = lambda where: release.wait(TIMEOUT_S) if where == "start" else None
    queue = make_queue()
    queue.start()
    try:
        running = queue.submit(make_req(steps=12, seed=13))
        wait_until(lambda: queue.get(running.id).state is JobState.RUNNING, "the claim")
        behind = queue.submit(make_req(steps=1, seed=14))
        ctx = queue.contexts[0]
        own = expected_service_s(ctx.engine, ctx.baselines, behind.request)
        ahead = expected_service_s(ctx.engine, ctx.baselines, running.request)
        assert queue.eta_s(queue.get(behind.id)) == pytest.approx(ahead + own)
        assert queue.eta_s(queue.get(running.id)) == pytest.approx(ahead)
    finally:
        release.set()
    assert [j.state for j in wait_done(queue, running.id, behind.id)] == [JobState.SUCCEEDED] * 2


def test_waiting_jobs_hear_their_new_position_when_one_starts(
    make_queue: Callable[..., LocalQueue], make_req: Callable[..., Any]
) -> None:
    queue = make_queue()
    ids = [queue.submit(make_req(steps=2)).id for _ in range(3)]
    queue.start()
    wait_done(queue, *ids)
    last = ids[-1]
    positions = [e.data["position"] for e in queue.hub.history(last) if e.type == "queued"]
    # Submitted behind two jobs; moved up as each of them started.
    assert positions[0] == 2 and positions[-1] == 0
    assert positions == sorted(positions, reverse=True)
    events = queue.events_since(last, (-1, -1))
    assert [e.key for e in events] == sorted(e.key for e in events)  # ids stay ordered
