"""JobStore: SQLite in WAL mode, durable inserts, claim order, restart recovery, events."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from steadygen.errors import JobNotFound, StorageError
from steadygen.queue.job import Job, JobEvent, JobState, new_job_id
from steadygen.queue.sqlite.store import JobStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    s = JobStore(tmp_path / "jobs.sqlite3")
    yield s
    s.close()


def add(store: JobStore, make_req: Any, priority: int = 0, **req: Any) -> Job:
    job = Job(id=new_job_id(), request=make_req(**req), priority=priority)
    return store.insert(job, JobEvent(job.id, 0, 0, "queued", {"position": 0}))


def test_the_database_is_in_wal_mode(store: JobStore, tmp_path: Path) -> None:
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL between
    assert store.check() == "ok"


def test_accepting_and_cancelling_wait_for_the_disk(
    store: JobStore, make_req: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """insert and cancel commit with synchronous=FULL; claim, events and results do not."""
    seen: list[str] = []
    real = store._db

    class Spy:
        def execute(self, sql: str, *args: Any) -> Any:
            if sql.startswith(("PRAGMA synchronous", "BEGIN", "COMMIT")):
                seen.append(sql)
            return real.execute(sql, *args)

    monkeypatch.setattr(store, "_db", Spy())
    job = add(store, make_req)
    assert seen == ["PRAGMA synchronous=FULL", "BEGIN IMMEDIATE", "COMMIT",
                    "PRAGMA synchronous=NORMAL"]
    seen.clear()
    store.claim_next("w")
    store.add_event(JobEvent(job.id, 1, 0, "started", {}))
    store.finish(job.id, JobState.SUCCEEDED, result={"images": []})
    assert "PRAGMA synchronous=FULL" not in seen and seen.count("COMMIT") == 3
    seen.clear()
    other = add(store, make_req)
    seen.clear()
    store.cancel_queued(other.id, JobEvent(other.id, 0, 1, "cancelled", {}))
    store.request_cancel(other.id)
    assert seen.count("PRAGMA synchronous=FULL") == 2
    monkeypatch.undo()
    assert real.execute("PRAGMA synchronous").fetchone()[0] == 1


def test_an_insert_is_committed_and_visible_to_another_connection(
    store: JobStore, make_req: Any, tmp_path: Path
) -> None:
    job = add(store, make_req, seed=5)
    other = sqlite3.connect(tmp_path / "jobs.sqlite3")
    try:
        rows = other.execute("SELECT id, state FROM jobs").fetchall()
        events = other.execute("SELECT job_id, type FROM events").fetchall()
    finally:
        other.close()
    assert rows == [(job.id, "queued")]
    assert events == [(job.id, "queued")]


def test_jobs_survive_reopening_the_store(tmp_path: Path, make_req: Any) -> None:
    first = JobStore(tmp_path / "jobs.sqlite3")
    job = add(first, make_req, seed=77, steps=3)
    first.close()
    again = JobStore(tmp_path / "jobs.sqlite3")
    try:
        loaded = again.get(job.id)
    finally:
        again.close()
    assert loaded.request == job.request and loaded.state is JobState.QUEUED
    assert loaded.seq == job.seq > 0


def test_claim_order_is_priority_then_arrival(store: JobStore, make_req: Any) -> None:
    a = add(store, make_req, priority=0, seed=1)
    b = add(store, make_req, priority=5, seed=2)
    c = add(store, make_req, priority=0, seed=3)
    d = add(store, make_req, priority=5, seed=4)
    e = add(store, make_req, priority=-1, seed=5)
    assert [j.id for j in store.queued()] == [b.id, d.id, a.id, c.id, e.id]
    claimed = [store.claim_next("w") for _ in range(5)]
    assert [j.id for j in claimed if j] == [b.id, d.id, a.id, c.id, e.id]
    assert store.claim_next("w") is None
    first = claimed[0]
    assert first is not None
    assert first.state is JobState.RUNNING and first.attempts == 1 and first.worker == "w"
    assert store.get(first.id).started_at == first.started_at


def test_requeue_interrupted_puts_running_jobs_back_first_in_line(
    store: JobStore, make_req: Any
) -> None:
    a = add(store, make_req, seed=1)
    b = add(store, make_req, seed=2)
    claimed = store.claim_next("w")
    assert claimed is not None and claimed.id == a.id
    assert store.requeue_interrupted() == [a.id]  # as after a crash
    back = store.get(a.id)
    assert back.state is JobState.QUEUED and back.started_at is None and back.worker is None
    assert back.attempts == 1  # the run that was lost still counts
    again = store.claim_next("w")
    assert again is not None and again.id == a.id and again.attempts == 2
    assert store.requeue_interrupted() == [a.id]
    assert store.requeue_interrupted() == []
    assert store.get(b.id).state is JobState.QUEUED


def test_finish_records_the_result(store: JobStore, make_req: Any) -> None:
    job = add(store, make_req)
    store.claim_next("w")
    result = {"images": [f"{job.id}/0.png"], "timings": {"total_s": 1.5}}
    end = JobEvent(job.id, 1, 3, "succeeded", {"result": result})
    assert store.finish(job.id, JobState.SUCCEEDED, result=result, event=end)
    done = store.get(job.id)
    assert done.state is JobState.SUCCEEDED and done.result == result and done.error is None
    assert done.finished_at is not None and done.finished_at >= (done.started_at or 0)
    # the claim stored 'started' with the job's change of state
    assert [e.type for e in store.events(job.id)] == ["queued", "started", "succeeded"]
    # the first end wins: a second one changes nothing and says so
    assert not store.finish(job.id, JobState.FAILED, error="late")
    assert store.get(job.id).state is JobState.SUCCEEDED
    assert store.recent_succeeded(10)[-1].id == job.id


def test_cancel_queued_only_cancels_a_queued_job(store: JobStore, make_req: Any) -> None:
    running = add(store, make_req, seed=1)
    queued = add(store, make_req, seed=2)
    store.claim_next("w")
    assert store.cancel_queued(queued.id, JobEvent(queued.id, 0, 1, "cancelled", {}))
    assert store.get(queued.id).state is JobState.CANCELLED
    assert not store.cancel_queued(running.id, JobEvent(running.id, 1, 1, "cancelled", {}))
    assert store.get(running.id).state is JobState.RUNNING
    assert [e.type for e in store.events(running.id)] == ["queued", "started"]  # no stray
    store.request_cancel(running.id)
    assert store.get(running.id).cancel_requested


def test_requeue_only_moves_the_current_attempt_back(store: JobStore, make_req: Any) -> None:
    job = add(store, make_req)
    claimed = store.claim_next("w")
    assert claimed is not None and claimed.attempts == 1
    back = JobEvent(job.id, 1, 1, "requeued", {})
    assert not store.requeue(job.id, 2, back)  # a stale attempt changes nothing
    assert store.requeue(job.id, 1, back, handing_back=True)
    again = store.get(job.id)
    assert again.state is JobState.QUEUED and again.attempts == 0  # a hand-back is no attempt
    assert store.claim_next("w").attempts == 1  # type: ignore[union-attr]


def test_claim_dead_letters_a_job_started_too_often(store: JobStore, make_req: Any) -> None:
    job = add(store, make_req)
    for _ in range(2):  # started twice, and its process died each time
        store.claim_next("w", max_attempts=2)
        store.requeue_interrupted()
    assert store.claim_next("w", max_attempts=2) is None
    dead = store.get(job.id)
    assert dead.state is JobState.FAILED and dead.result == {"dead_letter": True}
    assert dead.error and "started 2 times without finishing" in dead.error
    assert [e.type for e in store.events(job.id)][-1] == "failed"


def test_list_counts_and_filters(store: JobStore, make_req: Any) -> None:
    jobs = [add(store, make_req, seed=k) for k in range(4)]
    store.claim_next("w")
    store.finish(jobs[0].id, JobState.FAILED, error="boom")
    assert [j.id for j in store.list(10)] == [j.id for j in reversed(jobs)]  # newest first
    assert [j.id for j in store.list(2)] == [jobs[3].id, jobs[2].id]
    assert [j.id for j in store.list(10, JobState.FAILED)] == [jobs[0].id]
    assert store.get(jobs[0].id).error == "boom"
    assert store.counts() == {"queued": 3, "running": 0, "succeeded": 0, "failed": 1,
                              "cancelled": 0}


def test_events_are_ordered_by_attempt_then_number_and_stored_once(
    store: JobStore, make_req: Any
) -> None:
    job = add(store, make_req)
    for attempt, n, kind in [(2, 0, "started"), (1, 1, "step"), (1, 0, "started"),
                             (2, 1, "succeeded")]:
        store.add_event(JobEvent(job.id, attempt, n, kind, {"n": n}))
    store.add_event(JobEvent(job.id, 1, 0, "started", {"duplicate": True}))  # ignored
    events = store.events(job.id)
    assert [e.key for e in events] == [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert events[1].data == {"n": 0}
    assert store.events("j-other") == []


def test_unknown_job_raises_job_not_found(store: JobStore) -> None:
    with pytest.raises(JobNotFound):
        store.get("j-missing")


def test_an_unusable_path_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(StorageError, match="taken"):
        JobStore(tmp_path / "taken")


def test_a_failed_write_is_a_storage_error_and_the_store_stays_usable(
    store: JobStore, make_req: Any
) -> None:
    job = add(store, make_req)
    with pytest.raises(StorageError):
        store.insert(job, JobEvent(job.id, 0, 0, "queued", {}))  # the same id again
    assert store.get(job.id).state is JobState.QUEUED
    add(store, make_req)
    assert store.counts()["queued"] == 2
