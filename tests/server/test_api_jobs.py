"""The native job API on a real server: concurrent clients, SSE order and resume, cancel,
lookup, listing, images, telemetry."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from PIL import Image

from tests.server.conftest import LONG_JOB, PROMPT, SMALL_JOB, ServerProc, parse_sse


def _run_native(srv: ServerProc, seed: int) -> str:
    job = srv.submit(**SMALL_JOB, seed=seed)
    assert srv.wait_done(job["id"])["state"] == "succeeded"
    return str(job["id"])


def _run_openai(srv: ServerProc, seed: int) -> str:
    body = {"prompt": PROMPT, "size": "256x256", "steps": 2, "seed": seed, "response_format": "url"}
    r = srv.request("POST", "/v1/images/generations", json=body, timeout=300)
    assert r.status_code == 200, r.text
    url = r.json()["data"][0]["url"]
    return str(url.split("/v1/jobs/")[1].split("/")[0])


def _run_a1111(srv: ServerProc, seed: int) -> str:
    body = {"prompt": PROMPT, "width": 256, "height": 256, "steps": 2, "seed": seed}
    r = srv.request("POST", "/sdapi/v1/txt2img", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return str(json.loads(r.json()["info"])["steadygen_job"])


def test_concurrent_clients_all_succeed_and_jobs_run_one_at_a_time(
    main_server: ServerProc,
) -> None:
    """8 clients x 3 jobs over the three APIs; with --concurrency 1 no two jobs overlap."""
    runners = (_run_native, _run_openai, _run_a1111)

    def client(i: int) -> list[str]:
        return [runners[i % 3](main_server, seed=100 * i + k) for k in range(3)]

    with ThreadPoolExecutor(8) as pool:
        ids = [job_id for ids in pool.map(client, range(8)) for job_id in ids]
    assert len(set(ids)) == 24
    jobs = sorted((main_server.job(i) for i in ids), key=lambda j: j["started_at"])
    assert all(j["state"] == "succeeded" and len(j["images"]) == 1 for j in jobs)
    for before, after in zip(jobs, jobs[1:], strict=False):
        assert after["started_at"] >= before["finished_at"], (before["id"], after["id"])


def test_sse_events_arrive_in_order_and_end_with_the_result(main_server: ServerProc) -> None:
    job = main_server.submit(**{**SMALL_JOB, "steps": 6}, seed=21)
    events = main_server.events(job["id"])  # the server ends the stream after the last one
    types = [e.event for e in events]
    assert types == ["queued", "started"] + ["step"] * 6 + ["succeeded"]
    keys = [e.key for e in events]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    steps = [e.data for e in events if e.event == "step"]
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6]
    assert all(s["steps"] == 6 and s["eta_s"] >= 0 and s["step_s"] > 0 for s in steps)
    assert all(e.data["job_id"] == job["id"] for e in events)
    assert isinstance(events[0].data["position"], int)
    result = events[-1].data["result"]
    assert result["images"] == [f"/v1/jobs/{job['id']}/images/0.png"]
    assert result["seed"] == 21 and len(result["timings"]["steps_s"]) == 6


def test_last_event_id_resumes_after_the_last_event_seen(main_server: ServerProc) -> None:
    job = main_server.submit(**{**SMALL_JOB, "steps": 6}, seed=22)
    first = main_server.events(job["id"], until=lambda e: e.event == "step")
    assert [e.event for e in first] == ["queued", "started", "step"]
    rest = main_server.events(job["id"], last_event_id=first[-1].id)
    assert rest, "nothing after the resume point"
    assert all(e.key > first[-1].key for e in rest)
    assert [e.event for e in first + rest] == ["queued", "started"] + ["step"] * 6 + ["succeeded"]
    assert [e.data["step"] for e in rest if e.event == "step"] == [2, 3, 4, 5, 6]
    # The ?after= query does the same for clients that cannot set headers.
    with httpx.stream(
        "GET",
        f"{main_server.base_url}/v1/jobs/{job['id']}/events",
        params={"after": rest[-2].id},
        headers=main_server.headers(),
        timeout=30,
    ) as r:
        tail = list(parse_sse(r.iter_lines()))
    assert [e.id for e in tail] == [rest[-1].id]


def test_cancel_a_queued_job_and_it_never_runs(main_server: ServerProc) -> None:
    long = main_server.submit(**LONG_JOB)
    main_server.wait_running(long["id"])
    queued = main_server.submit(**SMALL_JOB, seed=23)
    try:
        assert main_server.job(queued["id"])["state"] == "queued"
        answer = main_server.cancel(queued["id"])
        assert answer["state"] == "cancelled"
    finally:
        main_server.cancel_and_wait(long["id"])
    final = main_server.job(queued["id"])
    assert final["state"] == "cancelled"
    assert final["started_at"] is None and final["attempts"] == 0 and final["images"] == []
    events = main_server.events(queued["id"])
    assert [e.event for e in events] == ["queued", "cancelled"]
    assert events[-1].data["at_step"] == 0


def test_cancel_a_running_job_stops_it_at_a_step_boundary(main_server: ServerProc) -> None:
    job = main_server.submit(**LONG_JOB)
    first_step = main_server.wait_running(job["id"])
    assert first_step.data["step"] >= 1
    main_server.cancel(job["id"])
    final = main_server.wait_done(job["id"])
    assert final["state"] == "cancelled"
    assert final["attempts"] == 1 and final["images"] == [] and final["finished_at"]
    events = main_server.events(job["id"])
    assert [e.event for e in events].count("cancelled") == 1
    assert "succeeded" not in [e.event for e in events]
    at_step = events[-1].data["at_step"]
    assert 1 <= at_step < LONG_JOB["steps"]


def test_job_shows_position_and_eta_while_queued_and_timings_when_done(
    main_server: ServerProc,
) -> None:
    long = main_server.submit(**LONG_JOB)
    main_server.wait_running(long["id"])
    try:
        first = main_server.submit(**SMALL_JOB, seed=24)
        second = main_server.submit(**SMALL_JOB, seed=25)
        assert second["position"] == first["position"] + 1
        a, b = main_server.job(first["id"]), main_server.job(second["id"])
        assert (a["state"], b["state"]) == ("queued", "queued")
        assert (a["position"], b["position"]) == (0, 1)
        # Both include the running job's remaining time, which moves with every step, so
        # their order is checked where nothing runs: tests/queue/test_contract.py.
        assert a["eta_s"] > 0 and b["eta_s"] > 0
        running = main_server.job(long["id"])
        assert running["state"] == "running" and running["progress"]["steps"] == 100
        assert running["eta_s"] > 0
    finally:
        main_server.cancel_and_wait(long["id"])
    done = main_server.wait_done(second["id"])
    assert done["state"] == "succeeded" and done["position"] == 0 and done["eta_s"] == 0
    t = done["timings"]
    assert t["total_s"] > 0 and t["queue_wait_s"] >= 0 and len(t["steps_s"]) == 2
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]
    assert done["request"]["seed"] == 25 and done["request"]["width"] == 256


def test_list_filters_by_state_and_limit(main_server: ServerProc, done_job: dict[str, Any]) -> None:
    r = main_server.request("GET", "/v1/jobs", params={"state": "succeeded", "limit": 5})
    assert r.status_code == 200, r.text
    jobs = r.json()["jobs"]
    assert 1 <= len(jobs) <= 5
    assert all(j["state"] == "succeeded" for j in jobs)
    created = [j["created_at"] for j in jobs]
    assert created == sorted(created, reverse=True)  # newest first
    everything = main_server.request("GET", "/v1/jobs", params={"limit": 500}).json()["jobs"]
    assert done_job["id"] in {j["id"] for j in everything}
    one = main_server.request("GET", "/v1/jobs", params={"limit": 1}).json()["jobs"]
    assert len(one) == 1


def test_image_route_serves_the_png(main_server: ServerProc, done_job: dict[str, Any]) -> None:
    r = main_server.request("GET", done_job["images"][0])
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(r.content))
    assert image.format == "PNG" and image.size == (256, 256)
    missing = main_server.request("GET", f"/v1/jobs/{done_job['id']}/images/1.png")
    assert missing.status_code == 404
    assert "index" in missing.json()["error"]["message"]


def test_telemetry_latest_and_stream(main_server: ServerProc) -> None:
    r = main_server.request("GET", "/v1/telemetry")
    assert r.status_code == 200
    body = r.json()
    assert {"t_wall", "sample", "queue_depth", "running"} <= set(body)
    with httpx.stream(
        "GET",
        f"{main_server.base_url}/v1/telemetry/stream",
        params={"interval": 0.2},
        headers=main_server.headers(),
        timeout=30,
    ) as s:
        assert s.status_code == 200
        first = next(parse_sse(s.iter_lines()))
    assert first.event == "sample" and "queue_depth" in first.data
    bad = main_server.request("GET", "/v1/telemetry/stream", params={"interval": 0.01})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "interval"
