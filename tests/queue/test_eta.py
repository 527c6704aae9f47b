"""The one service-time model behind every ETA (queue/eta.py)."""

from __future__ import annotations

from typing import Any

import pytest

from steadygen.queue.eta import WINDOW, ServiceTimes, queued_eta_s, rough_service_s


def test_expected_is_the_median_of_the_recent_runs_of_the_shape(make_req: Any) -> None:
    times = ServiceTimes()
    req = make_req(steps=8)
    for s in (1.0, 1.2, 9.0):  # one slow run does not move the median far
        times.observe(req, s)
    assert times.expected_s(req) == pytest.approx(1.2)
    for _ in range(WINDOW):
        times.observe(req, 2.0)
    assert times.expected_s(req) == pytest.approx(2.0)  # only the last WINDOW count


def test_a_cold_run_counts_only_until_a_warm_one_is_known(make_req: Any) -> None:
    times = ServiceTimes()
    req = make_req(steps=8)
    times.observe(req, 5.0, cold=True)
    assert times.expected_s(req) == pytest.approx(5.0)  # better than nothing
    times.observe(req, 1.0)
    assert times.expected_s(req) == pytest.approx(1.0)  # the cold run is forgotten
    times.observe(req, 7.0, cold=True)  # a later cold run (a new process) is ignored
    assert times.expected_s(req) == pytest.approx(1.0)


def test_an_unseen_step_count_scales_from_the_same_size(make_req: Any) -> None:
    times = ServiceTimes()
    times.observe(make_req(steps=8), 1.6)
    assert times.expected_s(make_req(steps=4)) == pytest.approx(0.8)
    other_size = make_req(steps=8, width=512, height=512)
    assert times.expected_s(other_size) == pytest.approx(rough_service_s(other_size))


def test_a_waiting_job_ends_after_the_shared_work_ahead_then_its_own() -> None:
    assert queued_eta_s(own_s=1.0, ahead_s=4.0, running_left_s=2.0, workers=2) == 4.0
    assert queued_eta_s(own_s=1.0, ahead_s=0.0, running_left_s=0.0, workers=0) == 1.0


def test_warm_runs_of_the_same_size_beat_a_cold_run_of_the_shape(make_req: Any) -> None:
    times = ServiceTimes()
    times.observe(make_req(steps=4), 3.0, cold=True)  # 4 steps: only its first, cold run
    times.observe(make_req(steps=8), 1.6)  # 8 steps: warm
    assert times.expected_s(make_req(steps=4)) == pytest.approx(0.8)  # scaled from warm
    other = ServiceTimes({"256x256:4:0:1": [3.0]}, cold=["256x256:4:0:1"])
    assert other.expected_s(make_req(steps=4)) == pytest.approx(3.0)  # all there is
    assert other.expected_s(make_req(steps=8)) == pytest.approx(6.0)  # scaled from cold
