"""The queue's limits and durability on a real process: 429 past --max-queue, kill -9 and
restart, SIGTERM with jobs queued. These stop and restart the shared plain server."""

from __future__ import annotations

import signal
from typing import Any

from tests.server.conftest import LONG_JOB, SMALL_JOB, ServerProc

# Long enough to be killed mid-run, short enough to run again after the restart.
MEDIUM_JOB = {**LONG_JOB, "steps": 16}


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} is not in /metrics")


def _assert_ran_once(srv: ServerProc, job_id: str, attempts: int) -> dict[str, Any]:
    job = srv.job(job_id)
    assert job["state"] == "succeeded", job
    assert job["attempts"] == attempts, job
    assert len(job["images"]) == 1
    image = srv.request("GET", job["images"][0])
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    types = srv.db_event_types(job_id)
    assert types.count("succeeded") == 1, types
    assert types.count("started") == attempts, types
    assert not {"failed", "cancelled"} & set(types), types
    return job


def test_past_max_queue_is_429_with_retry_after(plain: ServerProc) -> None:
    long = plain.submit(**LONG_JOB)
    plain.wait_running(long["id"])
    queued = [plain.submit(**SMALL_JOB, seed=k) for k in range(3)]  # --max-queue 3
    try:
        r = plain.request("POST", "/v1/jobs", json={**SMALL_JOB, "seed": 9})
        assert r.status_code == 429, r.text
        retry = r.headers["retry-after"]
        assert retry.isdigit() and int(retry) >= 1
        error = r.json()["error"]
        assert error["type"] == "rate_limit_error" and error["code"] == "queue_full"
        assert "full" in error["message"]
        oai = plain.request("POST", "/v1/images/generations", json={"prompt": "x"})
        assert oai.status_code == 429 and oai.headers["retry-after"].isdigit()
        metrics = plain.request("GET", "/metrics").text
        assert _metric(metrics, "steadygen_jobs_rejected_total") >= 2
        assert _metric(metrics, "steadygen_queue_depth") == 3
    finally:
        for job in queued:
            plain.cancel(job["id"])
        plain.cancel_and_wait(long["id"])
    # Room again: a new job is accepted.
    again = plain.submit(**SMALL_JOB, seed=10)
    assert plain.wait_done(again["id"])["state"] == "succeeded"


def test_kill_9_then_restart_runs_every_accepted_job_exactly_once(plain: ServerProc) -> None:
    first = plain.submit(**MEDIUM_JOB)
    waiting = [plain.submit(**SMALL_JOB, seed=k) for k in (31, 32)]
    plain.wait_running(first["id"])
    plain.kill()

    assert plain.db_state(first["id"]) == ("running", 1)
    for job in waiting:
        assert plain.db_state(job["id"]) == ("queued", 0)

    plain.start()
    for job in [first, *waiting]:
        plain.wait_done(job["id"])
    again = _assert_ran_once(plain, first["id"], attempts=2)
    assert again["request"]["seed"] == MEDIUM_JOB["seed"]
    for job in waiting:
        _assert_ran_once(plain, job["id"], attempts=1)
    # The resumed stream of the first job shows its second attempt after the first one's.
    events = plain.events(first["id"])
    starts = [e for e in events if e.event == "started"]
    assert [s.data["attempt"] for s in starts] == [1, 2]
    assert events[-1].event == "succeeded" and events[-1].key[0] == 2


def test_sigterm_exits_within_the_grace_period_and_loses_nothing(plain: ServerProc) -> None:
    """The plain server's grace period is 1 s: a 100-step job cannot finish in it. SIGTERM
    stops the server cleanly; the queued jobs stay queued, and the running job is neither
    lost nor marked cancelled: it is handed back to the queue (not counted as an attempt)
    and runs again, from its start, after the restart. (The hand-back on both queue
    backends: tests/queue/test_contract.py.)"""
    running = plain.submit(**LONG_JOB)
    waiting = [plain.submit(**SMALL_JOB, seed=k) for k in (41, 42)]
    plain.wait_running(running["id"])
    log_start = len(plain.log_tail(10**9))
    # uvicorn shuts down gracefully, then re-raises the signal: -SIGTERM is a clean exit.
    assert plain.stop(timeout=60) in (0, -signal.SIGTERM)
    assert "Traceback" not in plain.log_tail(10**9)[log_start:]

    assert plain.db_state(running["id"])[0] in ("running", "queued")
    assert "cancelled" not in plain.db_event_types(running["id"])
    for job in waiting:
        assert plain.db_state(job["id"]) == ("queued", 0)
        assert plain.db_event_types(job["id"]) == ["queued"]
    assert plain.db_rows("PRAGMA integrity_check") == [("ok",)]

    plain.start()
    starts: list[Any] = []

    def second_start(e: Any) -> bool:
        if e.event == "started":
            starts.append(e)
        return len(starts) == 2

    events = plain.events(running["id"], until=second_start)
    assert [e.event for e in events].count("requeued") == 1  # the hand-back, recorded
    assert [s.data["attempt"] for s in starts] == [1, 1]  # a hand-back is not an attempt
    ids = [e.id for e in events]
    assert len(set(ids)) == len(ids)  # event ids stay unique: a resume misses nothing
    plain.cancel(running["id"])  # no need to run 100 steps again
    assert plain.wait_done(running["id"])["state"] == "cancelled"
    assert plain.job(running["id"])["attempts"] == 1
    for job in waiting:
        plain.wait_done(job["id"])
        _assert_ran_once(plain, job["id"], attempts=1)
