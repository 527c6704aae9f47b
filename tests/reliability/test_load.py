"""Load and soak on a real server: a burst from 20 clients against a queue bound of 50, jobs
retried after Retry-After until all are in, /healthz while the queue is full, and many jobs
in a row with the process's memory, file descriptors and threads watched for growth.

    pytest tests/reliability/test_load.py                 # burst, retry, soak of 100 jobs
    pytest tests/reliability/test_load.py -m slow         # the soak of 1000 jobs

The soak itself is benchmarks/soak.py (``soak``), which also runs on its own:
``python benchmarks/soak.py --jobs 1000``.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reliability.conftest import TINY_JOB, started_server, wait_all_done
from tests.server.conftest import ServerProc

MiB = 1 << 20
MAX_QUEUE = 50
CLIENTS, PER_CLIENT = 20, 10
# Holds the worker while the burst arrives, so that the queue does fill (a tiny job takes
# tens of milliseconds: without it, whether any 429 happens would depend on the machine).
# It would take minutes; it is cancelled once the test has what it needs.
BLOCKER = {"prompt": "hold the worker", "width": 1024, "height": 1024, "steps": 100, "n": 2,
           "seed": 1}
HEALTH_SAMPLES = 200  # /healthz round trips measured while the queue is full


def load_soak_module() -> Any:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"
    spec = importlib.util.spec_from_file_location("steadygen_bench_soak", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def load_server(server_factory: Callable[..., ServerProc]) -> ServerProc:
    return started_server(server_factory, max_queue=MAX_QUEUE, env={
        "STEADYGEN_LIMIT_MAX_STEPS": "100", "STEADYGEN_LIMIT_MAX_SIDE": "1024"})


@pytest.fixture
def load(load_server: ServerProc) -> Iterator[ServerProc]:
    assert load_server.alive()
    yield load_server
    assert load_server.alive(), load_server.log_tail()


class HealthProbe:
    """/healthz round trips from a thread of its own, every 20 ms, while a test runs."""

    def __init__(self, srv: ServerProc):
        self.srv = srv
        self.latencies_s: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with httpx.Client(base_url=self.srv.base_url, timeout=30.0) as c:
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    r = c.get("/healthz")
                    if r.status_code != 200:
                        self.failures.append(str(r.status_code))
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                self.latencies_s.append(time.monotonic() - t0)
                self._stop.wait(0.02)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def p99_s(self) -> float:
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def burst(srv: ServerProc, retry: bool) -> tuple[list[str], Counter[int], list[str]]:
    """CLIENTS threads each submit PER_CLIENT tiny jobs at once. Returns the accepted ids,
    the status counts, and the problems seen (anything but 202 and a well-formed 429)."""
    accepted: list[str] = []
    statuses: Counter[int] = Counter()
    problems: list[str] = []
    lock = threading.Lock()
    go = threading.Barrier(CLIENTS)

    def client(c_id: int) -> None:
        with httpx.Client(base_url=srv.base_url, timeout=60.0) as c:
            go.wait()
            for k in range(PER_CLIENT):
                while True:
                    r = c.post("/v1/jobs", json={**TINY_JOB, "seed": c_id * 1000 + k})
                    with lock:
                        statuses[r.status_code] += 1
                        if r.status_code == 202:
                            accepted.append(r.json()["id"])
                    if r.status_code == 429:
                        retry_after = r.headers.get("retry-after", "")
                        error = r.json().get("error", {})
                        if not retry_after.isdigit() or error.get("code") != "queue_full":
                            with lock:
                                problems.append(f"bad 429: {r.headers} {r.text}")
                        if retry:
                            time.sleep(min(int(retry_after or 1), 2))
                            continue
                    elif r.status_code != 202:
                        with lock:
                            problems.append(f"{r.status_code}: {r.text[:200]}")
                    break

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return accepted, statuses, problems


def test_a_burst_past_the_queue_bound_is_refused_with_429_and_every_accepted_job_runs(
    load: ServerProc, figures: dict[str, Any]
) -> None:
    """200 submissions from 20 clients at once while one long job holds the worker: exactly
    50 are accepted (the bound), 150 get 429 with Retry-After, nothing else; then all 50
    run to success. /healthz is measured while the queue is full and the clients keep
    knocking (more bursts, all refused)."""
    blocker = load.submit(**BLOCKER)
    load.wait_running(blocker["id"])
    with HealthProbe(load) as probe:
        accepted, statuses, problems = burst(load, retry=False)
        refused_later: Counter[int] = Counter()
        while len(probe.latencies_s) < HEALTH_SAMPLES:
            more, more_statuses, more_problems = burst(load, retry=False)
            accepted += more
            refused_later.update(more_statuses)
            problems += more_problems
        still_running = load.job(blocker["id"])["state"] == "running"
        queue_full_p99 = probe.p99_s()
    assert still_running, "the blocker finished while the queue was meant to be full"
    load.cancel(blocker["id"])
    assert not problems, problems[:5]
    assert statuses == {202: MAX_QUEUE, 429: CLIENTS * PER_CLIENT - MAX_QUEUE}, statuses
    assert set(refused_later) == {429}, refused_later
    done = wait_all_done(load, accepted)
    assert Counter(j["state"] for j in done.values()) == {"succeeded": MAX_QUEUE}
    assert not probe.failures, probe.failures[:5]
    figures["burst"] = {"clients": CLIENTS, "submissions": CLIENTS * PER_CLIENT,
                        "max_queue": MAX_QUEUE, "statuses": dict(statuses),
                        "refused_while_full": refused_later[429],
                        "accepted_completed": len(done), "lost": 0,
                        "healthz_samples": len(probe.latencies_s),
                        "healthz_p99_s": queue_full_p99,
                        "healthz_max_s": max(probe.latencies_s)}
    assert queue_full_p99 < 1.0, f"/healthz p99 {queue_full_p99:.3f} s with a full queue"


def test_200_jobs_from_20_clients_that_honour_retry_after_all_complete(
    load: ServerProc, figures: dict[str, Any]
) -> None:
    """The same 200 jobs, with clients that wait Retry-After and try again: every job is
    accepted in the end and every one succeeds, exactly once."""
    with HealthProbe(load) as probe:
        accepted, statuses, problems = burst(load, retry=True)
        done = wait_all_done(load, accepted)
    assert not problems, problems[:5]
    assert statuses[202] == CLIENTS * PER_CLIENT and set(statuses) <= {202, 429}, statuses
    assert len(set(accepted)) == CLIENTS * PER_CLIENT
    assert Counter(j["state"] for j in done.values()) == {"succeeded": CLIENTS * PER_CLIENT}
    assert all(j["attempts"] == 1 for j in done.values())
    assert not probe.failures, probe.failures[:5]
    figures["retry_load"] = {"jobs": CLIENTS * PER_CLIENT, "statuses": dict(statuses),
                             "completed": len(done), "lost": 0,
                             "healthz_p99_s": probe.p99_s(),
                             "healthz_median_s": statistics.median(probe.latencies_s)}
    assert probe.p99_s() < 1.0


def _soak(srv: ServerProc, jobs: int, figures: dict[str, Any], name: str) -> dict[str, Any]:
    soak = load_soak_module()
    assert srv.proc is not None
    with srv.client(timeout=120.0) as client:
        result = soak.soak(client, srv.proc.pid, jobs, every=max(1, jobs // 50))
    figures[name] = {k: v for k, v in result.items() if k != "samples"}
    return dict(result)


def _assert_bounded(result: dict[str, Any], rss_growth_bytes: int) -> None:
    assert result["rss_growth_bytes"] < rss_growth_bytes, (
        f"RSS grew {result['rss_growth_bytes'] / MiB:.1f} MiB from the early window to the "
        f"late one over {result['jobs']} jobs")
    assert result["fds_late"] <= result["fds_early"] + 2, result
    assert result["fds_max"] <= result["fds_early"] + 10, result
    assert result["threads_late"] <= result["threads_early"] + 2, result
    assert result["subscribers_end"] == 0, result
    assert result["healthz_max_s"] < 1.0, result


def test_soak_100_jobs_in_a_row_leaves_memory_descriptors_and_threads_flat(
    load: ServerProc, figures: dict[str, Any]
) -> None:
    _assert_bounded(_soak(load, 100, figures, "soak_100"), rss_growth_bytes=16 * MiB)


@pytest.mark.slow
def test_soak_1000_jobs_in_a_row_leaves_memory_descriptors_and_threads_flat(
    load: ServerProc, figures: dict[str, Any]
) -> None:
    _assert_bounded(_soak(load, 1000, figures, "soak_1000"), rss_growth_bytes=32 * MiB)
