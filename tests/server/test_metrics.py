"""/metrics: valid Prometheus text (promtool), the expected steadygen_ names, and the values
a finished job leaves behind."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from steadygen.queue.job import Job, JobState
from steadygen.server.metrics import Metrics
from tests.server.conftest import SMALL_JOB, ServerProc

EXPECTED = {
    # name (as the parser reports it) -> type
    "steadygen_request_duration_seconds": "histogram",
    "steadygen_queue_wait_seconds": "histogram",
    "steadygen_service_duration_seconds": "histogram",
    "steadygen_phase_duration_seconds": "histogram",
    "steadygen_step_duration_seconds": "histogram",
    "steadygen_jobs_finished": "counter",
    "steadygen_jobs_submitted": "counter",
    "steadygen_jobs_rejected": "counter",
    "steadygen_slowdown_seconds": "counter",
    "steadygen_queue_depth": "gauge",
    "steadygen_jobs": "gauge",
    "steadygen_model_loaded": "gauge",
    "steadygen_model_warm": "gauge",
    "steadygen_build_info": "gauge",  # an info metric, as the 0.0.4 text format shows it
}


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(
    text: str, sample_name: str, labels: dict[str, str] | None = None,
    missing: float | None = None,
) -> float:
    """One sample's value; ``missing`` when it is absent (a labelled series that has not
    been seen yet), else absence fails the test."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            wanted = labels or {}
            if s.name == sample_name and all(s.labels.get(k) == v for k, v in wanted.items()):
                return float(s.value)
    if missing is not None:
        return missing
    raise AssertionError(f"{sample_name}{labels} is not in the metrics")


@pytest.fixture(scope="module")
def scraped(main_server: ServerProc) -> dict[str, str]:
    """/metrics before and after one more small job."""
    before = main_server.request("GET", "/metrics").text
    job = main_server.submit(**SMALL_JOB, seed=61)
    assert main_server.wait_done(job["id"])["state"] == "succeeded"
    return {"before": before, "after": main_server.request("GET", "/metrics").text}


def test_metrics_pass_promtool(scraped: dict[str, str]) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package: prometheus)")
    check = subprocess.run([promtool, "check", "metrics"], input=scraped["after"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_expected_names_and_types(main_server: ServerProc, scraped: dict[str, str]) -> None:
    r = main_server.request("GET", "/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    found = families(scraped["after"])
    for name, kind in EXPECTED.items():
        assert name in found, f"{name} is missing"
        assert found[name].type == kind, (name, found[name].type)
    ours = [n for n in found if not n.startswith("steadygen_")]
    assert ours == [], f"metrics without the steadygen_ prefix: {ours}"
    for name, family in found.items():
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), name


def test_histogram_buckets_cover_50_ms_to_120_s(scraped: dict[str, str]) -> None:
    service = families(scraped["after"])["steadygen_service_duration_seconds"]
    bounds = {float(s.labels["le"]) for s in service.samples if s.name.endswith("_bucket")}
    assert {0.05, 0.1, 1.0, 10.0, 60.0, 120.0} <= bounds
    assert float("inf") in bounds


def test_a_finished_job_moves_the_counters_and_histograms(scraped: dict[str, str]) -> None:
    before, after = scraped["before"], scraped["after"]
    pairs: list[tuple[str, dict[str, str]]] = [
        ("steadygen_jobs_submitted_total", {}),
        ("steadygen_jobs_finished_total", {"state": "succeeded"}),
        ("steadygen_service_duration_seconds_count", {}),
        ("steadygen_queue_wait_seconds_count", {}),
        ("steadygen_phase_duration_seconds_count", {"phase": "decode"}),
    ]
    for sample, labels in pairs:
        was = value(before, sample, labels, missing=0.0)
        assert value(after, sample, labels) >= was + 1, sample
    steps_before = value(before, "steadygen_step_duration_seconds_count")
    assert value(after, "steadygen_step_duration_seconds_count") >= steps_before + 2
    assert value(after, "steadygen_model_loaded") == 1.0
    assert value(after, "steadygen_model_warm") == 1.0
    assert value(after, "steadygen_jobs", {"state": "succeeded"}) >= 1
    assert value(after, "steadygen_build_info", {"model": "zimage-tiny"}) == 1.0


def test_metrics_recorder_observes_a_finished_job_once(make_req: Any) -> None:
    metrics = Metrics()
    timings = {"total_s": 2.0, "queue_wait_s": 0.5, "encode_s": 0.1, "denoise_s": 1.5,
               "decode_s": 0.3, "save_s": 0.1, "steps_s": [0.5, 0.5, 0.5]}
    diagnosis = {"slow": True, "causes": [{"kind": "cpu_contention", "seconds": 0.4}]}
    job = Job(id="j1", request=make_req(), state=JobState.SUCCEEDED,
              result={"timings": timings, "diagnosis": diagnosis})
    metrics.job_submitted(job)
    metrics.job_finished(job)
    metrics.job_finished(Job(id="j2", request=make_req(), state=JobState.CANCELLED))
    metrics.job_rejected()
    text = metrics.render().decode()
    assert value(text, "steadygen_request_duration_seconds_sum") == pytest.approx(2.5)
    assert value(text, "steadygen_queue_wait_seconds_sum") == pytest.approx(0.5)
    assert value(text, "steadygen_service_duration_seconds_count") == 1
    assert value(text, "steadygen_phase_duration_seconds_sum", {"phase": "steps"}) == 1.5
    assert value(text, "steadygen_step_duration_seconds_count") == 3
    assert value(text, "steadygen_step_duration_seconds_bucket", {"le": "0.5"}) == 3
    assert value(text, "steadygen_jobs_finished_total", {"state": "succeeded"}) == 1
    assert value(text, "steadygen_jobs_finished_total", {"state": "cancelled"}) == 1
    assert value(text, "steadygen_slowdown_seconds_total", {"cause": "cpu_contention"}) == 0.4
    assert value(text, "steadygen_slow_jobs_total") == 1
    assert value(text, "steadygen_jobs_rejected_total") == 1
    assert value(text, "steadygen_jobs_submitted_total") == 1
