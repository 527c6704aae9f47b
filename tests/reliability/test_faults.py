"""Faults on a real server process: out of memory in the middle of a job, an unwritable or
full data directory, kill -9 while jobs are being submitted, the job database locked by
another process, SSE clients that vanish or read slowly, and SIGTERM with jobs queued.
After each: the failed job says why, the server still answers, the database passes
``PRAGMA integrity_check``, and no accepted job is lost.

``fault_server`` arms the test hook ``STEADYGEN_TEST_FAULT=oom@step:50`` (steadygen/serve.py,
``InjectedFault``): the first job that reaches step 50 after each start runs out of memory.
Only the OOM test runs jobs that long; every other job here has fewer than 50 steps.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sqlite3
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reliability.conftest import (
    TINY_JOB,
    Tmpfs,
    metric,
    proc_stats,
    server_output,
    started_server,
    wait_all_done,
    wait_for,
)
from tests.server.conftest import ServerProc, parse_sse

MiB = 1 << 20
OOM_AT_STEP = 50
FAULT_ENV = {
    "STEADYGEN_TEST_FAULT": f"oom@step:{OOM_AT_STEP}",
    "STEADYGEN_LIMIT_MAX_STEPS": "100",
    "STEADYGEN_LIMIT_MAX_SIDE": "512",
    "STEADYGEN_SHUTDOWN_GRACE_S": "30",
}
# Seconds of work on the tiny model: long enough to be caught running, well under the
# 30 s grace period, and short of the OOM step.
LONG_JOB = {"prompt": "a long job", "width": 512, "height": 512, "steps": 40, "seed": 3}


@pytest.fixture(scope="module")
def fault_server(server_factory: Callable[..., ServerProc]) -> ServerProc:
    return started_server(server_factory, env=FAULT_ENV)


@pytest.fixture
def fault(fault_server: ServerProc) -> Iterator[ServerProc]:
    """The fault server, running; started again if a test left it down."""
    if not fault_server.alive():
        fault_server.start()
    yield fault_server
    if not fault_server.alive():
        fault_server.start()


def integrity(srv: ServerProc) -> str:
    return str(srv.db_rows("PRAGMA integrity_check")[0][0])


def healthz_latency_s(srv: ServerProc) -> float:
    t0 = time.monotonic()
    r = httpx.get(srv.base_url + "/healthz", timeout=30.0)
    assert r.status_code == 200
    return time.monotonic() - t0


# -- out of memory --------------------------------------------------------------------


def test_out_of_memory_fails_that_job_clearly_and_the_next_one_succeeds(
    fault: ServerProc, figures: dict[str, Any]
) -> None:
    warm = fault.submit(**{**TINY_JOB, "steps": OOM_AT_STEP - 1})
    assert fault.wait_done(warm["id"])["state"] == "succeeded"
    before = proc_stats(fault)
    failed_before = _finished(fault, "failed")

    oom = fault.submit(**{**TINY_JOB, "steps": OOM_AT_STEP + 10})
    final = fault.wait_done(oom["id"])
    assert final["state"] == "failed", final
    assert "out of memory" in final["error"] and "next job can run" in final["error"], final
    assert final["images"] == []
    events = fault.events(oom["id"])
    assert [e.event for e in events][-1] == "failed"
    assert "out of memory" in events[-1].data["error"]
    steps = [e.data["step"] for e in events if e.event == "step"]
    # It failed where the fault was injected: at the end of step 50, before reporting it.
    assert max(steps) == OOM_AT_STEP - 1, steps

    after_fail = proc_stats(fault)
    again = fault.submit(**{**TINY_JOB, "steps": OOM_AT_STEP + 10, "seed": 2})
    assert fault.wait_done(again["id"])["state"] == "succeeded"  # the hook fires once
    after = proc_stats(fault)
    assert _finished(fault, "failed") == failed_before + 1
    figures["oom"] = {"rss_before_bytes": before.rss_bytes,
                      "rss_after_failure_bytes": after_fail.rss_bytes,
                      "rss_after_next_job_bytes": after.rss_bytes,
                      "ballast_bytes": 128 * MiB}
    # The failing generation held 128 MiB when it raised; none of it may stay behind.
    assert after_fail.rss_bytes - before.rss_bytes < 64 * MiB, (before, after_fail)
    assert after.rss_bytes - before.rss_bytes < 64 * MiB, (before, after)
    assert "Traceback" not in fault.log_tail(200_000)


def _finished(srv: ServerProc, state: str) -> float:
    for line in srv.request("GET", "/metrics").text.splitlines():
        if line.startswith(f'steadygen_jobs_finished_total{{state="{state}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- the data directory ---------------------------------------------------------------


@pytest.mark.parametrize("how", ["images path is a file", "images dir is a full tmpfs"])
def test_an_unwritable_images_directory_fails_the_job_clearly_and_nothing_else(
    fault: ServerProc, make_tmpfs: Callable[[int], Tmpfs], how: str
) -> None:
    earlier = fault.submit(**TINY_JOB, seed=21)
    earlier = fault.wait_done(earlier["id"])
    images = fault.data_dir / "images"
    moved = images.with_name("images.moved")
    tmpfs: Tmpfs | None = None
    if how == "images path is a file":
        images.rename(moved)
        images.write_text("not a directory")
    else:
        tmpfs = make_tmpfs(1 << 20)
        subprocess.run(["mount", "--bind", str(tmpfs.path), str(images)], check=True)
    try:
        if tmpfs is not None:
            tmpfs.fill()
        job = fault.submit(**TINY_JOB, seed=22)
        final = fault.wait_done(job["id"])
        assert final["state"] == "failed", final
        assert "cannot write" in final["error"] and "StorageError" in final["error"], final
        assert fault.request("GET", "/healthz").json() == {"ok": True}
        assert fault.request("GET", "/readyz").json()["ready"] is True
        assert integrity(fault) == "ok"
        assert fault.db_state(final["id"]) == ("failed", 1)
    finally:
        if tmpfs is None:
            images.unlink()
            moved.rename(images)
        else:
            tmpfs.unfill()
            subprocess.run(["umount", str(images)], check=True)
    ok = fault.submit(**TINY_JOB, seed=23)
    ok = fault.wait_done(ok["id"])
    assert ok["state"] == "succeeded", ok
    for done in (earlier, ok):
        png = fault.request("GET", done["images"][0])
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")


def test_a_full_disk_refuses_new_jobs_with_507_and_loses_no_accepted_job(
    tmp_path: Path, make_tmpfs: Callable[[int], Tmpfs], figures: dict[str, Any]
) -> None:
    """The whole data directory (database and images) on an 8 MiB tmpfs, filled while a
    job runs and three wait. New submissions get 507 naming the full disk; the running
    job fails clearly when its image cannot be written (its end is recorded once space is
    back); the waiting ones run; the database is intact."""
    disk = make_tmpfs(8 << 20)
    srv = _server_on(tmp_path, disk)
    try:
        _fill_and_check(srv, disk, figures)
    finally:
        srv.kill()


def _fill_and_check(srv: ServerProc, disk: Tmpfs, figures: dict[str, Any]) -> None:
    try:
        running = srv.submit(**LONG_JOB)
        waiting = [srv.submit(**TINY_JOB, seed=k) for k in range(3)]
        srv.wait_running(running["id"])
        disk.fill()
        statuses: dict[int, int] = {}
        refused: dict[str, Any] | None = None
        accepted_while_full: list[str] = []
        for k in range(50):
            r = srv.request("POST", "/v1/jobs", json={**TINY_JOB, "seed": 100 + k})
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            assert r.status_code in (202, 507), r.text
            if r.status_code == 202:
                accepted_while_full.append(r.json()["id"])
            else:
                refused = r.json()["error"]
                break
        assert refused is not None, f"no 507 in 50 submissions on a full disk: {statuses}"
        assert refused["code"] == "storage" and "full" in refused["message"], refused
        assert srv.request("GET", "/healthz").json() == {"ok": True}
        # The running job ends on the full disk: its PNG cannot be written, and then
        # (most often) neither can its end. Either way the server must stay up.
        cannot_record = f"cannot record the end of job {running['id']}"
        wait_for(lambda: cannot_record in server_output(srv)
                 or srv.db_state(running["id"])[0] != "running",
                 "the running job to meet the full disk", timeout=120)
        assert srv.request("GET", "/healthz").json() == {"ok": True}
        assert srv.request("GET", "/readyz").json()["ready"] is True
    finally:
        disk.unfill()
    accepted = [running["id"], *(j["id"] for j in waiting), *accepted_while_full]
    # Once there is space again, a job whose end could not be recorded is recorded (it
    # must not stay 'running' until a restart), and the waiting ones run.
    done = wait_all_done(srv, accepted, timeout=90)
    assert done[running["id"]]["state"] == "failed", done[running["id"]]
    assert "cannot write" in done[running["id"]]["error"], done[running["id"]]
    for job in waiting:
        assert done[job["id"]]["state"] == "succeeded", done[job["id"]]
    assert integrity(srv) == "ok"
    rows = srv.db_rows(f"SELECT id FROM jobs WHERE id IN ({','.join('?' * len(accepted))})",
                       tuple(accepted))
    assert len(rows) == len(accepted)
    again = srv.submit(**TINY_JOB, seed=999)
    assert srv.wait_done(again["id"])["state"] == "succeeded"
    figures["disk_full"] = {"submissions_while_full": statuses,
                            "running_job": done[running["id"]]["state"],
                            "accepted": len(accepted), "lost": 0}


def _server_on(root: Path, disk: Tmpfs) -> ServerProc:
    """A server whose data directory is on the tmpfs; its log stays outside it."""
    srv = ServerProc(root, {}, {**FAULT_ENV, "STEADYGEN_LIMIT_MIN_SIDE": "64"})
    srv.data_dir = disk.path / "data"
    return srv.start()


# -- kill -9 ----------------------------------------------------------------------------


def test_kill_9_while_jobs_arrive_loses_no_accepted_job(
    fault: ServerProc, figures: dict[str, Any]
) -> None:
    """A client submits as fast as it can; the server is killed mid-job. Every job that got
    a 202 is in the database; after a restart every one of them runs to success exactly
    once (the interrupted one again from its start, as attempt 2)."""
    running = fault.submit(**LONG_JOB)
    fault.wait_running(running["id"])
    accepted: list[str] = []
    stop = threading.Event()

    def submitter() -> None:
        with httpx.Client(base_url=fault.base_url, timeout=10.0) as c:
            k = 0
            while not stop.is_set():
                try:
                    r = c.post("/v1/jobs", json={**TINY_JOB, "seed": 300 + k})
                except httpx.HTTPError:
                    return  # the server is gone: this submission was not accepted
                if r.status_code == 202:
                    accepted.append(r.json()["id"])
                k += 1

    thread = threading.Thread(target=submitter)
    thread.start()
    wait_for(lambda: len(accepted) >= 10, "ten accepted submissions", timeout=60)
    fault.kill()
    stop.set()
    thread.join(30)
    assert fault.db_state(running["id"]) == ("running", 1)
    for job_id in accepted:
        assert fault.db_state(job_id)[0] in ("queued", "running", "succeeded"), job_id
    assert integrity(fault) == "ok"

    fault.start()
    done = wait_all_done(fault, [running["id"], *accepted])
    for job_id, job in done.items():
        assert job["state"] == "succeeded", job
        assert fault.db_event_types(job_id).count("succeeded") == 1, job_id
    assert done[running["id"]]["attempts"] == 2
    figures["kill_9"] = {"accepted_before_kill": len(accepted) + 1, "lost": 0,
                         "interrupted_job_attempts": done[running["id"]]["attempts"]}


# -- SQLite busy ----------------------------------------------------------------------


def test_a_database_locked_by_another_process_delays_but_never_breaks(
    fault: ServerProc, figures: dict[str, Any]
) -> None:
    """Another connection holds the write lock for 3 s (SQLite's busy_timeout here is
    10 s) while a job runs and a synchronous OpenAI request waits behind it. The job's end,
    a new submission and the waiting request are delayed, then all succeed; reads and
    /healthz go on meanwhile."""
    known = fault.submit(**TINY_JOB, seed=41)
    fault.wait_done(known["id"])
    results: dict[str, Any] = {}

    def generate() -> None:
        with fault.client(timeout=120.0) as c:
            results["openai"] = c.post("/v1/images/generations", json={
                "prompt": "waits for the lock", "size": "64x64", "steps": 1})

    running = fault.submit(**LONG_JOB)
    fault.wait_running(running["id"])
    waiter = threading.Thread(target=generate)
    waiter.start()
    wait_for(lambda: fault.request("GET", "/v1/jobs", params={"state": "queued"}).json()["jobs"],
             "the OpenAI request's job to be queued", timeout=30)
    hold_s = 3.0
    locker = sqlite3.connect(fault.db_path, timeout=0, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")

    def submit() -> None:
        with fault.client(timeout=60.0) as c:
            results["submit"] = c.post("/v1/jobs", json={**TINY_JOB, "seed": 42})

    def read() -> None:
        with fault.client(timeout=60.0) as c:
            results["read"] = c.get(f"/v1/jobs/{known['id']}")

    threads = [threading.Thread(target=submit), threading.Thread(target=read)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    health: list[float] = []
    while time.monotonic() - t0 < hold_s:
        health.append(healthz_latency_s(fault))
        time.sleep(0.05)
    locker.execute("COMMIT")
    locker.close()
    for t in [*threads, waiter]:
        t.join(120)
    assert results["openai"].status_code == 200, results["openai"].text
    assert fault.job(running["id"])["state"] == "succeeded"
    r = results["submit"]
    assert r.status_code == 202, r.text
    assert results["read"].status_code == 200, results["read"].text
    assert fault.wait_done(r.json()["id"])["state"] == "succeeded"
    assert integrity(fault) == "ok"
    figures["sqlite_locked"] = {"hold_s": hold_s, "healthz_max_s": max(health),
                                "healthz_samples": len(health)}
    assert max(health) < 1.0, f"/healthz stalled {max(health):.2f} s while the DB was locked"


def test_a_lock_held_past_busy_timeout_delays_a_jobs_record_but_loses_nothing(
    fault: ServerProc, figures: dict[str, Any]
) -> None:
    """The write lock is held until the server gives up waiting (busy_timeout, 10 s) on
    the end of a job that has just finished. The server retries; once the lock goes, the
    job is recorded as it ended (succeeded, once), not left 'running' until a restart and
    not reported failed."""
    job = fault.submit(**LONG_JOB)
    fault.wait_running(job["id"])
    locker = sqlite3.connect(fault.db_path, timeout=0, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    t0 = time.monotonic()
    try:
        wait_for(lambda: f"cannot record the end of job {job['id']}" in server_output(fault),
                 "the server to give up waiting for the lock once", timeout=120)
        health = [healthz_latency_s(fault) for _ in range(10)]
    finally:
        locker.execute("COMMIT")
        locker.close()
    held_s = time.monotonic() - t0
    final = wait_for(lambda: (j := fault.job(job["id"]))["state"] != "running" and j,
                     "the job's end to be recorded", timeout=60)
    assert final["state"] == "succeeded" and final["attempts"] == 1, final
    assert fault.request("GET", final["images"][0]).content.startswith(b"\x89PNG")
    types = fault.db_event_types(job["id"])
    assert types.count("succeeded") == 1 and "failed" not in types, types
    assert [e.event for e in fault.events(job["id"])][-1] == "succeeded"
    assert integrity(fault) == "ok"
    figures["sqlite_locked_past_timeout"] = {"held_s": held_s, "healthz_max_s": max(health)}
    assert max(health) < 1.0, health


# -- SSE clients ----------------------------------------------------------------------


def test_clients_that_vanish_mid_stream_leave_no_subscription_behind(fault: ServerProc) -> None:
    idle = metric(fault, "steadygen_event_subscribers")
    job = fault.submit(**LONG_JOB)
    fault.wait_running(job["id"])
    with contextlib.ExitStack() as stack:
        for k in range(20):  # raw sockets, closed without a goodbye
            path = (f"/v1/jobs/{job['id']}/events" if k % 2
                    else "/v1/telemetry/stream?interval=0.2")
            s = stack.enter_context(socket.create_connection(("127.0.0.1", fault.port), 30))
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert b"200 OK" in s.recv(4096)
            # linger 0: closing sends an RST, as from a client that crashed
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        wait_for(lambda: metric(fault, "steadygen_event_subscribers") >= idle + 20,
                 "twenty subscriptions", timeout=30)
    wait_for(lambda: metric(fault, "steadygen_event_subscribers") == idle,
             "the subscriptions to close", timeout=60)
    assert fault.wait_done(job["id"])["state"] == "succeeded"


def test_a_slow_reader_gets_every_event_in_order_and_slows_no_one(
    fault: ServerProc, figures: dict[str, Any]
) -> None:
    """One client reads its job's stream a few bytes at a time through a 4 KiB receive
    buffer; another opens the telemetry stream and never reads. Other jobs and /healthz
    carry on; the slow reader still gets every event, in order, and when both go away
    their subscriptions close."""
    idle = metric(fault, "steadygen_event_subscribers")
    job = fault.submit(**{**LONG_JOB, "steps": 30})
    others = [fault.submit(**TINY_JOB, seed=500 + k) for k in range(20)]

    with socket.socket() as stalled, socket.socket() as slow:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", fault.port))
        stalled.sendall(b"GET /v1/telemetry/stream?interval=0.2 HTTP/1.1\r\nHost: x\r\n\r\n")
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(("127.0.0.1", fault.port))
        slow.sendall(f"GET /v1/jobs/{job['id']}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        slow.settimeout(60)
        received = b""
        health: list[float] = []
        deadline = time.monotonic() + 240
        while not received.endswith(b"\r\n0\r\n\r\n"):  # the stream ends after the last event
            assert time.monotonic() < deadline, received[-500:]
            chunk = slow.recv(64)
            assert chunk, "the server closed the slow stream early"
            received += chunk
            time.sleep(0.02)
            if len(health) < 100:
                health.append(healthz_latency_s(fault))
        done = wait_all_done(fault, [o["id"] for o in others])
        assert all(j["state"] == "succeeded" for j in done.values())

    body = received.split(b"\r\n\r\n", 1)[1].decode(errors="replace")
    lines = _unchunk(body).splitlines()
    events = list(parse_sse(iter(lines)))
    kinds = [e.event for e in events]
    assert kinds[0] == "queued" and kinds[-1] == "succeeded", kinds
    assert [e.data["step"] for e in events if e.event == "step"] == list(range(1, 31))
    assert [e.key for e in events] == sorted(e.key for e in events)
    wait_for(lambda: metric(fault, "steadygen_event_subscribers") == idle,
             "the subscriptions to close", timeout=60)
    figures["slow_sse"] = {"healthz_max_s": max(health), "healthz_samples": len(health),
                           "events_received": len(events)}
    assert max(health) < 1.0, max(health)


def _unchunk(body: str) -> str:
    """The payload of a chunked HTTP/1.1 body (sizes in hex on their own lines)."""
    out, rest = [], body
    while rest:
        size_line, _, rest = rest.partition("\r\n")
        try:
            size = int(size_line.strip() or "0", 16)
        except ValueError:
            out.append(size_line + rest)  # not chunked after all
            break
        if size == 0:
            break
        out.append(rest[:size])
        rest = rest[size + 2:]
    return "".join(out)


# -- SIGTERM ----------------------------------------------------------------------------


def test_sigterm_lets_the_running_job_finish_and_keeps_the_queue(
    fault: ServerProc, figures: dict[str, Any]
) -> None:
    running = fault.submit(**LONG_JOB)
    waiting = [fault.submit(**TINY_JOB, seed=k) for k in (61, 62, 63)]
    fault.wait_running(running["id"])
    log_start = len(fault.log_tail(10**9))
    t0 = time.monotonic()
    assert fault.stop(timeout=90) in (0, -signal.SIGTERM)
    stop_s = time.monotonic() - t0
    log = fault.log_tail(10**9)[log_start:]
    assert "Traceback" not in log, log

    assert fault.db_state(running["id"]) == ("succeeded", 1)  # finished within the grace
    assert fault.db_event_types(running["id"])[-1] == "succeeded"
    for job in waiting:
        assert fault.db_state(job["id"]) == ("queued", 0)
        assert fault.db_event_types(job["id"]) == ["queued"]
    assert integrity(fault) == "ok"
    png = running["id"]
    fault.start()
    assert fault.request("GET", f"/v1/jobs/{png}/images/0.png").status_code == 200
    done = wait_all_done(fault, [j["id"] for j in waiting])
    assert all(j["state"] == "succeeded" and j["attempts"] == 1 for j in done.values()), done
    figures["sigterm"] = {"stop_s": stop_s, "grace_s": 30, "queued_kept": len(waiting)}
