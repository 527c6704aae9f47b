"""On the real tiny pipeline: the first job of a shape is a cold start at what it measurably
paid once, and per-request cache emptying is booked at its measured cost."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.analysis.helpers import cause, cause_kinds, run_job, tiny_server


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path,
         cache_dir: Path) -> dict[str, dict]:
    data = tmp_path_factory.mktemp("attribution-cold")
    # Warm-up covers 256x256 only; the cache is emptied after every job.
    with tiny_server(data, cache_dir, empty_cache_per_request=True, sampler_hz=20) as target:
        out = {"first_ever_320": run_job(target, 320, steps=4)}  # no baseline at all yet
        for k in range(3):
            out[f"warm_256_{k}"] = run_job(target, 256, steps=4, seed=k)
        out["first_384"] = run_job(target, 384, steps=4)  # baseline scaled from 256
        out["second_384"] = run_job(target, 384, steps=4)
    return out


def test_the_first_job_of_a_shape_without_any_baseline_is_a_cold_start(
    jobs: dict[str, dict]
) -> None:
    job = jobs["first_ever_320"]
    assert job["timings"]["first_of_shape"] is True
    c = cause(job, "cold_start")
    assert c is not None and c["details"]["first_of_shape"] is True
    assert "first run of this shape" in c["evidence"]
    assert job["diagnosis"]["expected_s"] is None  # said so, not guessed


def test_the_first_job_of_a_new_shape_books_only_its_measured_one_off_cost(
    jobs: dict[str, dict]
) -> None:
    first = jobs["first_384"]
    d = first["diagnosis"]
    assert first["timings"]["first_of_shape"] is True
    assert d["baseline_exact"] is False
    assert any("scaled from another shape" in n for n in d["notes"])
    steps = first["timings"]["steps_s"]
    one_off = max(0.0, steps[0] - sorted(steps[1:])[len(steps[1:]) // 2])
    c = cause(first, "cold_start")
    if c is not None:  # named when past the noise floor, at the first step's one-off excess
        assert c["details"]["first_of_shape"] is True
        assert c["seconds"] == pytest.approx(one_off, abs=0.02)
    else:
        assert any(n.startswith("cold_start measured below the noise floor")
                   for n in d["notes"]), d
    second = jobs["second_384"]  # the shape is warm now
    assert second["timings"]["first_of_shape"] is False
    assert cause(second, "cold_start") is None


def test_warm_jobs_are_not_cold(jobs: dict[str, dict]) -> None:
    for k in range(3):
        job = jobs[f"warm_256_{k}"]
        assert job["timings"]["first_of_shape"] is False
        assert "cold_start" not in cause_kinds(job)


def test_per_request_cache_emptying_is_booked_at_its_measured_cost(
    jobs: dict[str, dict]
) -> None:
    for name, job in jobs.items():
        assert job["timings"]["memory_s"] > 0, name
        c = cause(job, "memory_management")
        if c is not None:
            assert c["details"]["empty_cache_per_request"] is True
            assert c["seconds"] == pytest.approx(job["timings"]["memory_s"])
            assert "per-request cache emptying" in c["evidence"]
        else:  # cheaper than the noise floor: said in a note with what it took
            assert any(n.startswith("memory_management measured below the noise floor")
                       for n in job["diagnosis"]["notes"]), (name, job["diagnosis"])
