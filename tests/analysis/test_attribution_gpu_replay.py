"""Replayed GPU telemetry: a synthetic trace stepped through the fake pynvml, read by the real
NVML backend and Sampler, then attributed. A clock drop under a thermal reason and a foreign
process computing on the GPU must come out as exactly those causes, with plausible seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from steadygen.analysis.attribute import CLOCKS, CPU, FOREIGN, Cause, Diagnosis, attribute
from steadygen.analysis.baseline import WAIT_PER_CPU, Expectation
from steadygen.engine.timings import Timings
from steadygen.telemetry import Sampler, TelemetryWindow
from steadygen.telemetry.nvml import NvmlBackend
from tests.analysis.builders import ScriptedHost, expectation, timings
from tests.telemetry import fake_pynvml
from tests.telemetry.fake_pynvml import FakeDevice, FakeNvml, FakeProcess
from tests.telemetry.helpers import FakeClock

BASE_MHZ = 1980
STEP_S = 0.2  # 8 steps; the baseline's step is 0.1 s
TICK_S = 0.05  # a 20 Hz sampler


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeNvml]:
    state = fake_pynvml.install(FakeNvml(devices=[FakeDevice(
        sm_clock_mhz=BASE_MHZ, util_gpu=100, temp_c=70, power_mw=650_000)]))
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml)
    yield state
    fake_pynvml.install(FakeNvml())


@pytest.fixture
def foreign_pid() -> Iterator[int]:
    """A real process, so the backend can name it (as it would a browser or another app)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def replay(nv: FakeNvml, *, clock_ratio: float, reason: int, throttle: str | None,
           foreign: FakeProcess | None) -> tuple[Timings, TelemetryWindow]:
    """One job's trace: the device's state changes when the job starts, the sampler ticks
    every 50 ms on a fake clock, and the throttle counter runs while the reason holds."""
    dev = nv.devices[0]
    dev.add_process(FakeProcess(pid=os.getpid(), used_bytes=20 << 30, sm_util=60))  # ours
    clock = FakeClock(t=99.8)
    host = ScriptedHost()
    sampler = Sampler(interval_s=0, gpu_backend=NvmlBackend([0]), host_backend=host,  # type: ignore[arg-type]
                      clock=clock, process_every_s=0.5)
    t = timings([STEP_S] * 8, t0=100.0)
    for _ in range(4):  # before the job: at full clock
        sampler.tick()
        clock.t += TICK_S
        host.cpu_s += TICK_S
    clock.t = t.marks["start"]
    dev.update(sm_clock_mhz=round(BASE_MHZ * clock_ratio), clock_events=reason, temp_c=88)
    if foreign is not None:
        dev.add_process(foreign)
    mark = sampler.begin_job("j")
    while clock.t < t.marks["end"] - 1e-9:
        sampler.tick()
        clock.t = round(clock.t + TICK_S, 6)
        host.cpu_s += TICK_S  # one busy thread, no waiting: the host is quiet
        host.run_delay_ns += 100_000
        if throttle is not None:
            dev.add_throttle(throttle, TICK_S)
    window = sampler.end_job(mark)
    sampler.stop()
    return t, window


def must(d: Diagnosis, kind: str) -> Cause:
    found = d.cause(kind)
    assert found is not None, (kind, d)
    return found


def gpu_expectation() -> Expectation:
    return expectation(step_s=0.1, signals={"sm_clock_hz": BASE_MHZ * 1e6, "run_delay_s": 0.002,
                                            "cpu_s": 1.0, WAIT_PER_CPU: 0.002})


def test_thermal_clock_drop_and_a_foreign_process_are_exactly_the_causes(
    nvml: FakeNvml, foreign_pid: int
) -> None:
    t, window = replay(nvml, clock_ratio=0.6, reason=fake_pynvml.SW_THERMAL,
                       throttle="sw_thermal",
                       foreign=FakeProcess(pid=foreign_pid, used_bytes=6 << 30, sm_util=45))
    gpu = window.deltas.gpu(0)
    assert gpu is not None and gpu.throttle_s["sw_thermal"] == pytest.approx(t.total_s)
    assert all(s.t_mono >= t.marks["start"] for s in window.samples)
    d = attribute(t, gpu_expectation(), window)

    assert {c.kind for c in d.causes} == {CLOCKS, FOREIGN}
    assert d.cause(CPU) is None
    clocks = must(d, CLOCKS)
    assert clocks.details["reason"] == "sw_thermal"
    assert clocks.details["sm_clock_hz"] == pytest.approx(0.6 * BASE_MHZ * 1e6)
    assert "thermal" in clocks.evidence and "1.80 s throttled" in clocks.evidence
    # every step ran at 60 % of the baseline's clock: 40 % of the step time is the clock's
    assert clocks.seconds == pytest.approx(t.denoise_s * (1 - 0.6), rel=0.1)

    foreign = must(d, FOREIGN)
    (proc,) = foreign.details["processes"]
    assert proc["pid"] == foreign_pid and proc["name"].startswith("python")
    assert proc["used_bytes"] == 6 << 30 and proc["sm_util_pct"] == 45
    assert f"pid {foreign_pid}" in foreign.evidence and "6.0 GiB" in foreign.evidence
    # the rest of the step excess: 1.6 s of steps against 0.8 s, less the clock's share
    step_excess = t.denoise_s - 0.8
    assert 0 < foreign.seconds <= step_excess - clocks.seconds + 1e-9
    assert foreign.seconds == pytest.approx(step_excess - clocks.seconds, abs=0.02)

    assert d.slow and d.excess_s == pytest.approx(0.8)
    assert d.unexplained_s == pytest.approx(0.0, abs=0.02)
    assert d.main_cause == CLOCKS


def test_a_power_capped_clock_names_the_power_cap(nvml: FakeNvml) -> None:
    t, window = replay(nvml, clock_ratio=0.75, reason=fake_pynvml.SW_POWER_CAP,
                       throttle="sw_power_cap", foreign=None)
    d = attribute(t, gpu_expectation(), window)
    assert {c.kind for c in d.causes} == {CLOCKS}
    assert must(d, CLOCKS).details["reason"] == "sw_power_cap"
    assert must(d, CLOCKS).seconds == pytest.approx(t.denoise_s * 0.25, rel=0.1)
    assert d.unexplained_s == pytest.approx(0.8 - t.denoise_s * 0.25, abs=0.02)


def test_the_reason_comes_from_the_bits_when_there_are_no_counters(nvml: FakeNvml) -> None:
    nvml.devices[0].unsupported_fields.update(fake_pynvml.FIELD_OF_REASON.values())
    t, window = replay(nvml, clock_ratio=0.6, reason=fake_pynvml.HW_SLOWDOWN, throttle=None,
                       foreign=None)
    d = attribute(t, gpu_expectation(), window)
    assert must(d, CLOCKS).details["reason"] == "hw_slowdown"
    assert "active in 100% of samples" in must(d, CLOCKS).evidence


def test_a_job_at_the_baselines_clock_alone_on_its_gpu_has_no_gpu_cause(
    nvml: FakeNvml
) -> None:
    t, window = replay(nvml, clock_ratio=1.0, reason=0, throttle=None, foreign=None)
    d = attribute(t, gpu_expectation(), window)
    assert d.causes == []
    assert d.unexplained_s == pytest.approx(0.8)  # slow, but nothing measured explains it
