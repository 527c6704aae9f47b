"""Scale-out with real processes: a redis-server (append-only), one ``steadygen serve
--queue`` API and two ``steadygen worker`` processes on the tiny model, sharing a data
directory. Crashes are real: kill -9 of a worker, of Redis, of the API.

Workers run with a 3 s visibility timeout, 2 attempts, one torch thread, and the test hook
STEADYGEN_TEST_FAIL_PROMPT (a job with that prompt fails on every attempt).
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from steadygen.queue.job import parse_event_id
from steadygen.queue.redis.queue import RedisQueue

from .redis_support import (
    Proc,
    RedisServer,
    free_port,
    needs_redis,
    start_api,
    start_worker,
    wait_for,
    wait_ready,
)

pytestmark = [needs_redis, pytest.mark.redis, pytest.mark.timeout(240)]

FAIL_PROMPT = "this prompt fails on purpose"
WORKER_ENV = {"STEADYGEN_VISIBILITY_TIMEOUT_S": "3", "STEADYGEN_MAX_ATTEMPTS": "2",
              "STEADYGEN_SHUTDOWN_GRACE_S": "1", "STEADYGEN_TEST_FAIL_PROMPT": FAIL_PROMPT}
LONG = {"size": "512x512", "steps": 100}  # several seconds on one CPU thread
SHORT = {"size": "256x256", "steps": 2}


@dataclass
class Cluster:
    root: Path
    redis: RedisServer
    port: int
    api: Proc | None = None
    workers: dict[str, Proc] = field(default_factory=dict)
    spawned: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_api(self) -> None:
        self.api = start_api("api", self.redis.url, self.root / "data", self.root / "logs",
                             self.port)
        wait_ready(self.base, self.api, 60)

    def ensure_workers(self, n: int = 2) -> None:
        for name in [k for k, p in self.workers.items() if not p.alive()]:
            del self.workers[name]
        while len(self.workers) < n:
            self.spawned += 1
            name = f"worker{self.spawned}"
            self.workers[name] = start_worker(name, self.redis.url, self.root / "data",
                                              self.root / "logs", **WORKER_ENV)
        queue = self.queue()
        wait_for(lambda: sum(bool(w.info.get("ready")) for w in queue._workers()) >= n, 120,
                 f"{n} workers to be ready")
        queue.close()

    def queue(self) -> RedisQueue:
        """The test's own view of Redis (the same code as the API's)."""
        return RedisQueue(self.redis.url, stream="steadygen:jobs", group="steadygen-workers",
                          visibility_timeout_s=3, max_attempts=2, max_queue=64)

    def worker_by_consumer(self, consumer: str) -> Proc:
        pid = int(consumer.rsplit("-", 1)[1])
        return next(p for p in self.workers.values() if p.pid == pid)

    def submit(self, prompt: str, **body: Any) -> str:
        def post() -> str:
            r = httpx.post(self.base + "/v1/jobs", json={"prompt": prompt, **body}, timeout=10)
            return r.json()["id"] if r.status_code == 202 else ""

        return wait_for(post, 30, "the API to accept a job", every_s=0.3)

    def job(self, job_id: str) -> dict[str, Any]:
        r = httpx.get(f"{self.base}/v1/jobs/{job_id}", timeout=10)
        r.raise_for_status()
        return r.json()

    def wait_state(self, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
        def ended() -> dict[str, Any] | None:
            view = self.job(job_id)
            return view if view["state"] in ("succeeded", "failed", "cancelled") else None

        try:
            return wait_for(ended, timeout_s, f"job {job_id} to end", every_s=0.2)
        except AssertionError as exc:  # say what the processes were doing
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def wait_running(self, job_id: str, min_step: int = 1) -> dict[str, Any]:
        def running() -> dict[str, Any] | None:
            view = self.job(job_id)
            assert view["state"] in ("queued", "running"), view
            return view if view.get("progress", {}).get("step", 0) >= min_step else None

        return wait_for(running, 90, f"job {job_id} to be running", every_s=0.05)

    def logs(self) -> str:
        procs = [p for p in [self.api, *self.workers.values()] if p is not None]
        return "\n".join(f"--- {p.name} ---\n{p.log()[-2500:]}" for p in procs)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("scaleout")
    c = Cluster(root, RedisServer(root / "redis").start(), free_port())
    try:
        c.ensure_workers(2)  # meanwhile the API starts: it needs no model
        c.start_api()
        yield c
    finally:
        for p in [*c.workers.values(), c.api]:
            if p is not None:
                p.kill()
        c.redis.stop()


@pytest.fixture
def two_workers(cluster: Cluster) -> Cluster:
    cluster.ensure_workers(2)
    return cluster


def events_of(queue: RedisQueue, job_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [(e.id, e.type, e.data) for e in queue.events_since(job_id, (-1, -1))]


def test_two_workers_run_forty_jobs_each_exactly_once(two_workers: Cluster) -> None:
    c = two_workers
    ids = [c.submit(f"job {i}", **SHORT) for i in range(40)]
    views = [c.wait_state(i) for i in ids]
    assert {v["state"] for v in views} == {"succeeded"}, c.logs()
    q = c.queue()
    jobs = [q.get(i) for i in ids]
    assert {j.attempts for j in jobs} == {1}
    assert len({j.worker for j in jobs}) == 2  # both workers took part
    for j in jobs:
        types = [t for _, t, _ in events_of(q, j.id)]
        assert types.count("started") == 1 and types.count("succeeded") == 1, types
        assert (c.root / "data" / "images" / j.result["images"][0]).is_file()
    stats = q.stats()
    assert (stats.stream_length, stats.pending, stats.lag) == (0, 0, 0)
    # each worker serves its own metrics, with the jobs it ran
    ran = 0
    for w in q._workers():
        text = httpx.get(f"http://127.0.0.1:{w.info['metrics_port']}/metrics", timeout=5).text
        line = next(x for x in text.splitlines()
                    if x.startswith("steadygen_request_duration_seconds_count"))
        ran += int(float(line.split()[-1]))
    assert ran >= 40
    metrics = httpx.get(c.base + "/metrics", timeout=5).text
    assert "steadygen_queue_lag 0.0" in metrics and "steadygen_workers 2.0" in metrics
    assert c.api is not None  # the API loaded no model: not even torch
    assert "libtorch" not in Path(f"/proc/{c.api.pid}/maps").read_text()
    q.close()


def test_api_telemetry_shows_the_freshest_worker_sample(cluster: Cluster) -> None:
    c = cluster  # the API has no sampler; a worker that samples publishes its latest sample
    snapshot = httpx.get(c.base + "/v1/telemetry", timeout=10).json()
    assert snapshot["sample"] is None  # the cluster's workers run without a sampler
    sampling = start_worker("sampling", c.redis.url, c.root / "data", c.root / "logs",
                            sampler_hz=2, **WORKER_ENV)
    try:
        def sampled() -> dict[str, Any] | None:
            snap = httpx.get(c.base + "/v1/telemetry", timeout=10).json()
            return snap if snap["sample"] else None

        snapshot = wait_for(sampled, 120, "a worker's sample in /v1/telemetry", every_s=0.3)
        sample = snapshot["sample"]
        assert sample["worker"].endswith(f"-{sampling.pid}")  # its consumer name
        assert sample["host"]["rss_bytes"] > 0 and sample["host"]["cpu_count"] >= 1
        assert sample["t_wall"] > 0 and isinstance(sample["gpus"], list)
        assert snapshot["gpu_backend"] in ("none", "nvml", "nvidia-smi")
    finally:
        sampling.stop()
    assert sampling.proc.returncode == 0, sampling.log()[-2000:]


def test_synchronous_apis_return_images_made_by_a_worker(two_workers: Cluster) -> None:
    c = two_workers  # OpenAI and A1111 routes wait for the job and read the shared images
    r = httpx.post(c.base + "/v1/images/generations", timeout=120,
                   json={"prompt": "openai client", "size": "256x256", "steps": 2})
    assert r.status_code == 200, r.text
    assert base64.b64decode(r.json()["data"][0]["b64_json"]).startswith(b"\x89PNG")
    r = httpx.post(c.base + "/sdapi/v1/txt2img", timeout=120,
                   json={"prompt": "a1111 client", "width": 256, "height": 256, "steps": 2})
    assert r.status_code == 200, r.text
    assert base64.b64decode(r.json()["images"][0]).startswith(b"\x89PNG")


def test_cancel_reaches_the_worker_process_holding_the_job(two_workers: Cluster) -> None:
    c = two_workers
    job_id = c.submit("cancel me", **LONG)
    c.wait_running(job_id, min_step=2)
    progress = httpx.get(c.base + "/sdapi/v1/progress", timeout=10).json()  # A1111 clients
    assert progress["state"]["job"] == job_id and 0 < progress["progress"] < 1
    assert progress["state"]["sampling_steps"] == 100
    r = httpx.delete(f"{c.base}/v1/jobs/{job_id}", timeout=10)
    assert r.status_code == 200
    view = c.wait_state(job_id, 60)
    assert view["state"] == "cancelled", c.logs()
    q = c.queue()
    [(_, kind, data)] = [e for e in events_of(q, job_id) if e[1] == "cancelled"]
    assert 2 <= data["at_step"] < 100
    assert q.stats().pending == 0
    q.close()
    assert c.wait_state(c.submit("after a cancel", **SHORT))["state"] == "succeeded"


def test_failing_job_is_dead_lettered_after_max_attempts(two_workers: Cluster) -> None:
    c = two_workers
    job_id = c.submit(FAIL_PROMPT, **SHORT)
    view = c.wait_state(job_id, 60)
    assert view["state"] == "failed" and view["attempts"] == 2
    assert view["error"].startswith("dead letter: failed on all 2 attempts")
    assert "STEADYGEN_TEST_FAIL_PROMPT matched" in view["error"]
    failed = httpx.get(c.base + "/v1/jobs", params={"state": "failed"}, timeout=10).json()
    assert job_id in [j["id"] for j in failed["jobs"]]
    q = c.queue()
    assert q.get(job_id).result == {"dead_letter": True}
    assert [t for _, t, _ in events_of(q, job_id)] == ["queued", "started", "requeued",
                                                      "started", "failed"]
    q.close()


def test_sse_clients_resume_across_an_api_restart(two_workers: Cluster) -> None:
    c = two_workers
    job_id = c.submit("follow me", size="512x512", steps=60)
    first: list[tuple[str, str]] = []
    got_step = threading.Event()

    def follow(into: list[tuple[str, str]], last_id: str | None, stop_after_step: bool) -> None:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            with httpx.stream("GET", f"{c.base}/v1/jobs/{job_id}/events", headers=headers,
                              timeout=httpx.Timeout(10, read=60)) as r:
                event_id = kind = ""
                for line in r.iter_lines():
                    if line.startswith("id:"):
                        event_id = line[3:].strip()
                    elif line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line == "" and event_id:
                        into.append((event_id, kind))
                        if kind == "step" and stop_after_step:
                            got_step.set()
                        event_id = kind = ""
        except (httpx.HTTPError, OSError):
            pass  # the server went away under us

    reader = threading.Thread(target=follow, args=(first, None, True), daemon=True)
    reader.start()
    assert got_step.wait(90), c.logs()
    assert c.api is not None
    c.api.kill()  # kill -9 while the client follows
    reader.join(10)
    c.start_api()
    second: list[tuple[str, str]] = []
    follow(second, first[-1][0], False)
    keys = [parse_event_id(i) for i, _ in first + second]
    assert keys == sorted(set(keys)), (first, second)  # no repeats, no reordering
    assert second and second[-1][1] == "succeeded", second
    assert c.job(job_id)["state"] == "succeeded"


def test_accepted_jobs_survive_a_redis_restart(two_workers: Cluster) -> None:
    c = two_workers
    ids = [c.submit(f"before the crash {i}", **SHORT) for i in range(10)]
    c.redis.kill()  # kill -9; append-only with fsync always
    c.redis.start()
    views = [c.wait_state(i, 120) for i in ids]
    assert {v["state"] for v in views} == {"succeeded"}, c.logs()
    assert all(p.alive() for p in c.workers.values()), c.logs()


def test_stopping_worker_hands_its_job_back(two_workers: Cluster) -> None:
    c = two_workers  # SIGTERM (a KEDA scale-down) past the 1 s grace: the job goes back
    job_id = c.submit("hand me back", **LONG)
    c.wait_running(job_id, min_step=1)
    q = c.queue()
    holder = q.get(job_id).worker
    assert holder is not None
    worker = c.worker_by_consumer(holder)
    worker.stop()
    assert worker.proc.returncode == 0, worker.log()[-2000:]
    view = c.wait_state(job_id, 150)
    assert view["state"] == "succeeded", c.logs()
    done = q.get(job_id)
    assert done.worker != holder and done.attempts == 1  # handing back is not an attempt
    events = events_of(q, job_id)
    assert "requeued" in [t for _, t, _ in events]
    keys = [parse_event_id(i) for i, _, _ in events]
    assert keys == sorted(set(keys))
    q.close()


def test_killed_worker_job_completes_on_the_other_worker(two_workers: Cluster) -> None:
    c = two_workers
    job_id = c.submit("survive a crash", **LONG)
    c.wait_running(job_id, min_step=1)
    q = c.queue()
    holder = q.get(job_id).worker
    assert holder is not None
    others = [c.submit(f"queued behind {i}", **SHORT) for i in range(3)]
    victim = c.worker_by_consumer(holder)
    victim.kill()  # kill -9 mid-job
    view = c.wait_state(job_id, 150)
    assert view["state"] == "succeeded", c.logs()
    done = q.get(job_id)
    assert done.attempts == 2 and done.worker != holder
    started = [d for _, t, d in events_of(q, job_id) if t == "started"]
    assert started[-1]["taken_over_from"] == holder
    assert {c.wait_state(i)["state"] for i in others} == {"succeeded"}
    stats = q.stats()
    assert (stats.stream_length, stats.pending) == (0, 0)
    q.close()
    assert json.loads(json.dumps(view))["images"]  # the image of the surviving attempt
