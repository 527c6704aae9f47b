"""The sampler: backend choice, job windows, counter deltas, a thread that does not die."""

from __future__ import annotations

import logging
import os
import threading

import pytest

from steadygen.telemetry import Alerts, GpuReading, HostCounters, HostReading, Sampler
from steadygen.telemetry.host import HostBackend
from steadygen.telemetry.window import in_window

from . import fake_pynvml as fk
from .fake_pynvml import FakeNvml, FakeProcess
from .helpers import FakeClock, sample


def test_window_holds_exactly_the_samples_between_its_edges() -> None:
    clock = FakeClock(100.0)
    sampler = Sampler(interval_s=0, enable_gpu=False, clock=clock)
    sampler.record(sample(99.9))
    mark = sampler.begin_job("job-1")
    for t in (100.0, 100.5, 101.0):
        sampler.record(sample(t))
    clock.t = 101.0
    sampler.record(sample(101.1))  # after the end edge
    window = sampler.end_job(mark)
    # half-open [start, end): the sample exactly on the end edge belongs to what follows
    assert [s.t_mono for s in window.samples] == [100.0, 100.5]
    assert (window.t_start, window.t_end) == (100.0, 101.0)
    assert [s.t_mono for s in window.slice(100.2, 101.0)] == [100.5]
    assert [s.t_mono for s in window.slice(100.5, 101.1)] == [100.5]
    assert window.series("gpu.0.sm_clock_hz") == [(100.0, 1.98e9), (100.5, 1.98e9)]
    with pytest.raises(ValueError, match="field path"):
        window.series("sm_clock_hz")


def test_sampler_off_still_gives_counter_deltas() -> None:
    sampler = Sampler(interval_s=0, enable_gpu=False)
    sampler.start()
    assert not sampler.running
    mark = sampler.begin_job("j")
    sum(range(300_000))
    window = sampler.end_job(mark)
    assert window.samples == []
    assert window.deltas.cpu_s is not None and window.deltas.cpu_s >= 0
    assert window.deltas.ctx_voluntary is not None
    summary = window.summary()
    assert summary["n_samples"] == 0 and summary["gpus"] == {}
    assert sampler.gpu_backend_name == "none"
    sampler.stop()


def test_a_job_shorter_than_the_scan_interval_still_sees_a_competitor_started_before_it(
) -> None:
    # Other processes are scanned once a minute here; the job lasts a fraction of that. A
    # burner started after the last scan and just before the job must be in the job's window
    # (the end edge scans when no scan ran during the job), and only once per job.
    import subprocess
    import sys

    host = HostBackend(scan_every_s=60.0)
    sampler = Sampler(interval_s=0.05, enable_gpu=False, host_backend=host)
    sampler.start()
    for _ in range(500):  # the thread's first tick has done its scan
        if host.scans:
            break
        threading.Event().wait(0.01)
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        threading.Event().wait(0.3)  # the burner runs before the job starts
        assert host.scans == 1 and not any(
            p.pid == burner.pid for p in sampler.latest().host.top_foreign)
        mark = sampler.begin_job("short")
        threading.Event().wait(0.2)
        window = sampler.end_job(mark)
        seen = [p for s in window.samples for p in s.host.top_foreign if p.pid == burner.pid]
        assert seen and max(p.cpu_pct for p in seen) > 5, window.samples[-1].host.top_foreign
        assert host.scans == 2
        # A job during which a scan ran gets no extra one at its end.
        mark = sampler.begin_job("scanned")
        sampler.read_sample(scan_host=True)
        sampler.end_job(mark)
        assert host.scans == 3
    finally:
        burner.kill()
        burner.wait()
        sampler.stop()


def test_no_gpu_says_so_once(
    fake_nvml: FakeNvml, no_nvidia_smi: None, caplog: pytest.LogCaptureFixture
) -> None:
    fake_nvml.init_error = fk.NVML_ERROR_LIBRARY_NOT_FOUND
    with caplog.at_level(logging.INFO, logger="steadygen.telemetry"):
        sampler = Sampler(interval_s=0)
    assert sampler.gpu_backend_name == "none"
    assert "NVML Shared Library Not Found" in sampler.gpu_status_reason or (
        "NVML cannot start" in sampler.gpu_status_reason
    )
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert lines[0].startswith("no NVIDIA GPU telemetry: ")
    assert lines[0].endswith("; host telemetry only")


def test_replayed_thermal_drop_and_foreign_process(fake_nvml: FakeNvml) -> None:
    """The scenario attribution replays: clocks fall under a thermal reason, a process joins."""
    clock = FakeClock(10.0)
    alerts = Alerts()
    sampler = Sampler(
        interval_s=0,
        process_every_s=0,
        clock=clock,
        alerts=alerts,
        host_backend=HostBackend(scan_every_s=1e9),
    )
    assert sampler.gpu_backend_name == "nvml"
    dev = fake_nvml.devices[0]
    dev.update(util_gpu=99, temp_c=70)
    dev.add_process(FakeProcess(pid=os.getpid(), used_bytes=20 << 30))
    mark = sampler.begin_job("job-hot")
    for step in range(6):
        clock.t = 10.1 + step * 0.1
        if step == 3:
            dev.update(sm_clock_mhz=1400, clock_events=fk.SW_THERMAL, temp_c=88)
            dev.add_process(FakeProcess(pid=4_194_001, used_bytes=6 << 30))
        sampler.tick()
    dev.add_energy(120.0)
    dev.add_throttle("sw_thermal", 0.3)
    clock.t = 10.7
    window = sampler.end_job(mark)
    sampler.stop()

    assert len(window.samples) == 6
    summary = window.summary()
    g0 = summary["gpus"]["0"]
    assert g0["sm_clock_hz"]["min"] == pytest.approx(1.4e9)
    assert g0["sm_clock_hz"]["max"] == pytest.approx(1.98e9)
    assert g0["clock_event_fraction"] == {"sw_thermal": 0.5}
    assert g0["energy_j"] == pytest.approx(120.0)
    assert g0["throttle_s"]["sw_thermal"] == pytest.approx(0.3)
    assert g0["throttle_s"]["sw_power_cap"] == 0
    foreign = summary["foreign_gpu_processes"]
    assert [(p["pid"], p["max_used_bytes"]) for p in foreign] == [(4_194_001, 6 << 30)]
    assert [p.pid for p in window.processes if p.ours] == [os.getpid()]
    assert alerts.counts()["gpu_temperature"] == 1
    assert alerts.counts()["foreign_gpu_process"] == 1
    assert window.to_dict()["deltas"]["gpus"][0]["energy_j"] == pytest.approx(120.0)


class _FlakyGpu:
    """A GPU backend whose reads fail now and then."""

    name = "flaky"
    periodic_processes = False

    def __init__(self) -> None:
        self.reads = 0

    def read_gpus(self) -> list[GpuReading]:
        self.reads += 1
        if self.reads in (2, 4):
            raise RuntimeError("driver hiccup")
        return [GpuReading(index=0, sm_clock_hz=1e9)]

    def read_processes(self, own_pids: set[int]) -> list:  # type: ignore[type-arg]
        return []

    def read_counters(self) -> list:  # type: ignore[type-arg]
        return []

    def static_info(self) -> list:  # type: ignore[type-arg]
        return []

    def close(self) -> None:
        pass


def test_thread_survives_reading_errors(caplog: pytest.LogCaptureFixture) -> None:
    got: list[float] = []
    enough = threading.Event()

    def listener(s: object) -> None:
        got.append(s.t_mono)  # type: ignore[attr-defined]
        if len(got) >= 5:
            enough.set()

    sampler = Sampler(
        interval_s=0.005, gpu_backend=_FlakyGpu(), host_backend=HostBackend(scan_every_s=1e9)
    )
    sampler.subscribe(listener)
    with caplog.at_level(logging.ERROR, logger="steadygen.telemetry"):
        sampler.start()
        try:
            assert enough.wait(timeout=30), "the sampler thread stopped producing samples"
            assert sampler.running
        finally:
            sampler.stop()
    assert not sampler.running
    stats = sampler.stats()
    assert stats.errors == 2 and stats.ticks >= 5
    assert len([r for r in caplog.records if "telemetry sample failed" in r.getMessage()]) == 1
    latest = sampler.latest()
    assert latest is not None and latest.gpus[0].sm_clock_hz == 1e9
    assert got == sorted(got)
    assert any(name == "gpu_sm_clock_hertz" for name, _, _ in sampler.gauges())


def test_ring_is_bounded() -> None:
    sampler = Sampler(interval_s=0, enable_gpu=False, ring_size=3)
    for t in range(10):
        sampler.record(sample(float(t)))
    assert [s.t_mono for s in sampler.samples_between(0, 100)] == [7.0, 8.0, 9.0]


def test_negative_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="interval_s must be 0"):
        Sampler(interval_s=-1, enable_gpu=False)


def test_stop_is_idempotent_and_final(fake_nvml: FakeNvml) -> None:
    sampler = Sampler(interval_s=0.05, host_backend=HostBackend(scan_every_s=1e9))
    sampler.stop()
    sampler.stop()
    assert fake_nvml.calls["nvmlShutdown"] == 1
    with pytest.raises(RuntimeError, match="cannot start again"):
        sampler.start()


def test_touching_windows_share_no_sample_and_miss_none() -> None:
    clock = FakeClock(10.0)
    sampler = Sampler(interval_s=0, enable_gpu=False, clock=clock)
    first = sampler.begin_job("a")
    for t in (10.0, 10.5, 11.0, 11.5, 12.0):  # 11.0 is on the edge between the two jobs
        sampler.record(sample(t))
    clock.t = 11.0
    a = sampler.end_job(first)
    second = sampler.begin_job("b")
    clock.t = 12.0
    b = sampler.end_job(second)
    assert [s.t_mono for s in a.samples] == [10.0, 10.5]
    assert [s.t_mono for s in b.samples] == [11.0, 11.5]
    assert in_window(11.0, 11.0, 12.0) and not in_window(11.0, 10.0, 11.0)


def test_a_tick_stamped_before_the_end_edge_is_in_the_window() -> None:
    """The race behind a flaky count: a sample read began before the job's end edge and
    was recorded after it. The end edge waits for that tick, so the window holds it."""
    clock = FakeClock(100.0)
    edge_read = threading.Event()

    class Host:
        def read_host(self, scan: bool | None = None) -> HostReading:
            return HostReading()

        def read_counters(self) -> HostCounters:
            if clock.t >= 101.0:
                edge_read.set()
            return HostCounters()

    class SlowGpu:
        name, periodic_processes = "slow", False

        def read_gpus(self) -> list[GpuReading]:
            edge_read.wait(timeout=30)  # the end edge is read while this tick is in flight
            return [GpuReading(index=0)]

        def read_counters(self) -> list:  # type: ignore[type-arg]
            return []

        def read_processes(self, own_pids: set[int]) -> list:  # type: ignore[type-arg]
            return []

        def static_info(self) -> list:  # type: ignore[type-arg]
            return []

        def close(self) -> None:
            pass

    sampler = Sampler(interval_s=0, gpu_backend=SlowGpu(), host_backend=Host(),  # type: ignore[arg-type]
                      clock=clock)
    mark = sampler.begin_job("j")
    clock.t = 100.5
    ticker = threading.Thread(target=sampler.tick)
    ticker.start()
    while sampler._tick_lock.acquire(blocking=False):  # wait until the tick holds it
        sampler._tick_lock.release()
    clock.t = 101.0
    window = sampler.end_job(mark)
    ticker.join()
    assert [s.t_mono for s in window.samples] == [100.5]
