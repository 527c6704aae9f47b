"""Alerts: one warning per episode, counts per kind."""

from __future__ import annotations

import logging

import pytest

from steadygen.telemetry import Alerts

from .helpers import gpu, proc, sample


def _warnings(caplog: pytest.LogCaptureFixture, kind: str) -> int:
    return sum(
        1
        for r in caplog.records
        if r.levelno == logging.WARNING and f"alert {kind}" in r.getMessage()
    )


def test_temperature_episodes(caplog: pytest.LogCaptureFixture) -> None:
    alerts = Alerts()
    with caplog.at_level(logging.WARNING, logger="steadygen.telemetry"):
        for t, temp in enumerate([70, 80, 81, 74, 70, 80]):
            alerts.observe(sample(t, gpus=[gpu(temp_c=temp)]))
            if t == 3:
                assert alerts.active() == ["gpu_temperature"]  # 74 C: not yet cooled down
    assert alerts.counts()["gpu_temperature"] == 2
    assert _warnings(caplog, "gpu_temperature") == 2


def test_clocks_below_max_needs_two_seconds(caplog: pytest.LogCaptureFixture) -> None:
    alerts = Alerts()
    low = gpu(sm_clock_hz=1.5e9, util_gpu_pct=95, clock_event_mask=0x20)
    with caplog.at_level(logging.WARNING, logger="steadygen.telemetry"):
        for t in (0.0, 1.0, 2.0):
            alerts.observe(sample(t, gpus=[low]))
        assert alerts.active() == []
        for t in (2.5, 3.0, 4.0):
            alerts.observe(sample(t, gpus=[low]))
        assert alerts.active() == ["clocks_below_max"]
        alerts.observe(sample(5.0, gpus=[gpu(sm_clock_hz=1.5e9, util_gpu_pct=10)]))  # idle: fine
        assert alerts.active() == []
    assert alerts.counts()["clocks_below_max"] == 1
    assert _warnings(caplog, "clocks_below_max") == 1
    assert "sw_thermal" in caplog.text


def test_foreign_process_episode(caplog: pytest.LogCaptureFixture) -> None:
    alerts = Alerts()
    ours = proc(1, True)
    with caplog.at_level(logging.WARNING, logger="steadygen.telemetry"):
        alerts.observe(sample(0, processes=[ours]))
        alerts.observe(sample(1, processes=[ours, proc(77, False, name="firefox")]))
        alerts.observe(sample(1.5, processes=None))  # not read this tick: still going on
        alerts.observe(sample(2, processes=[ours, proc(77, False, name="firefox")]))
        assert alerts.active() == ["foreign_gpu_process"]
        alerts.observe(sample(3, processes=[ours]))
        assert alerts.active() == []
    assert alerts.counts()["foreign_gpu_process"] == 1
    assert _warnings(caplog, "foreign_gpu_process") == 1
    assert "firefox" in caplog.text


def test_fragmentation(caplog: pytest.LogCaptureFixture) -> None:
    alerts = Alerts()
    with caplog.at_level(logging.WARNING, logger="steadygen.telemetry"):
        for ratio in (0.1, 0.5, 0.6, 0.1, 0.4):
            alerts.observe_fragmentation(ratio)
    assert alerts.counts() == {
        "gpu_temperature": 0,
        "foreign_gpu_process": 0,
        "clocks_below_max": 0,
        "allocator_fragmentation": 2,
    }
    assert _warnings(caplog, "allocator_fragmentation") == 2
    assert alerts.active() == ["allocator_fragmentation"]
