"""Replayed GPU telemetry: a synthetic trace stepped through the fake pynvml, read by the real
NVML backend and Sampler, then attributed. A clock drop under a thermal reason and a foreign
process computing on the GPU must come out as exactly those causes, with plausible seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator

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
           foreign: FakeProcess | None, steps: list[float] | None = None,
           ratios: list[float] | None = None, decode: float = 0.1, ours_pid: int | None = None,
           own_gpu_bytes: Callable[[int], int | None] | None = None,
           ) -> tuple[Timings, TelemetryWindow]:
    """One job's trace: the device's state changes when the job starts, the sampler ticks
    every 50 ms on a fake clock, and the throttle counter runs while the reason holds.
    ``ratios`` gives each step its own SM clock (a drop between steps); ``steps`` the step
    times, which need not follow the clock (memory-bound steps do not)."""
    dev = nv.devices[0]
    dev.add_process(FakeProcess(pid=ours_pid or os.getpid(), used_bytes=20 << 30,
                                sm_util=60))  # ours
    clock = FakeClock(t=99.8)
    host = ScriptedHost()
    sampler = Sampler(interval_s=0, gpu_backend=NvmlBackend([0]), host_backend=host,  # type: ignore[arg-type]
                      clock=clock, process_every_s=0.5, own_gpu_bytes=own_gpu_bytes)
    t = timings(steps or [STEP_S] * 8, t0=100.0, decode=decode)
    per_step = ratios or [clock_ratio] * len(t.steps_s)
    for _ in range(4):  # before the job: at full clock
        sampler.tick()
        clock.t += TICK_S
        host.cpu_s += TICK_S
    clock.t = t.marks["start"]
    dev.update(sm_clock_mhz=round(BASE_MHZ * per_step[0]), clock_events=reason, temp_c=88)
    if foreign is not None:
        dev.add_process(foreign)
    mark = sampler.begin_job("j")
    while clock.t < t.marks["end"] - 1e-9:
        k = sum(end <= clock.t + 1e-9 for end in t.step_ends)  # the step now running
        ratio = per_step[min(k, len(per_step) - 1)]
        dev.update(sm_clock_mhz=round(BASE_MHZ * ratio),
                   clock_events=reason if ratio < 1 else 0)
        sampler.tick()
        clock.t = round(clock.t + TICK_S, 6)
        host.cpu_s += TICK_S  # one busy thread, no waiting: the host is quiet
        host.run_delay_ns += 100_000
        if throttle is not None and ratio < 1:
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
    # every step ran at 60 % of the baseline's clock: a compute-bound 0.1 s step takes
    # 0.1 / 0.6 s, so the clock cost each step 0.0667 s; the steps took more (0.2 s)
    assert clocks.seconds == pytest.approx(8 * 0.1 * (1 / 0.6 - 1), rel=0.02)

    foreign = must(d, FOREIGN)
    (proc,) = foreign.details["processes"]
    assert proc["pid"] == foreign_pid and proc["name"].startswith("python")
    assert proc["used_bytes"] == 6 << 30 and proc["sm_util_pct"] == 45
    assert f"pid {foreign_pid}" in foreign.evidence and "6.0 GiB" in foreign.evidence
    assert foreign.details["gpu_share"] == pytest.approx(0.45)
    # the rest of the step excess (within its 45 % share of 1.6 s of steps)
    step_excess = t.denoise_s - 0.8
    assert foreign.seconds == pytest.approx(step_excess - clocks.seconds, abs=0.02)
    assert foreign.seconds <= 0.45 * t.denoise_s

    assert d.slow and d.excess_s == pytest.approx(0.8)
    assert d.unexplained_s == pytest.approx(0.0, abs=0.02)
    assert d.main_cause == CLOCKS


def test_a_power_capped_clock_names_the_power_cap(nvml: FakeNvml) -> None:
    t, window = replay(nvml, clock_ratio=0.75, reason=fake_pynvml.SW_POWER_CAP,
                       throttle="sw_power_cap", foreign=None)
    d = attribute(t, gpu_expectation(), window)
    assert {c.kind for c in d.causes} == {CLOCKS}
    assert must(d, CLOCKS).details["reason"] == "sw_power_cap"
    lost = 8 * 0.1 * (1 / 0.75 - 1)  # what a compute-bound step loses at 75 % clock
    assert must(d, CLOCKS).seconds == pytest.approx(lost, rel=0.02)
    assert d.unexplained_s == pytest.approx(0.8 - lost, abs=0.02)


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


# -- scenarios the clock model was not built from ------------------------------------------


def test_memory_bound_steps_that_do_not_slow_with_the_clock_are_not_blamed_on_it(
    nvml: FakeNvml
) -> None:
    # The clock is at 60 % through every step, but the steps are memory-bound and take the
    # baseline's 0.1 s; the job is slow in its decode (0.5 s more), which nothing measured
    # explains. The old 1/clock model booked 0.32 s to the clock; now it books none.
    t, window = replay(nvml, clock_ratio=0.6, reason=fake_pynvml.SW_POWER_CAP,
                       throttle="sw_power_cap", foreign=None, steps=[0.1] * 8, decode=0.6)
    d = attribute(t, gpu_expectation(), window)
    assert d.cause(CLOCKS) is None
    assert d.unexplained_s == pytest.approx(0.5, abs=1e-6)
    note = next(n for n in d.notes if n.startswith("gpu_clocks seen without cost"))
    assert "their times show 0.000 s" in note


def test_a_clock_drop_between_steps_is_booked_on_the_steps_after_it(nvml: FakeNvml) -> None:
    # Full clock for four steps, then 60 %: compute-bound steps 5-8 take 0.1 / 0.6 s.
    slow = 0.1 / 0.6
    t, window = replay(nvml, clock_ratio=1.0, reason=fake_pynvml.SW_THERMAL,
                       throttle="sw_thermal", foreign=None, steps=[0.1] * 4 + [slow] * 4,
                       ratios=[1.0] * 4 + [0.6] * 4)
    d = attribute(t, gpu_expectation(), window)
    clocks = must(d, CLOCKS)
    assert clocks.details["steps_at_lower_clock"] == 4 and clocks.details["steps"] == 8
    assert clocks.seconds == pytest.approx(4 * (slow - 0.1), rel=0.02)
    assert clocks.details["clock_model_fit"] == pytest.approx(1.0, abs=0.02)
    assert d.unexplained_s == pytest.approx(0.0, abs=0.01)


def test_a_clock_drop_that_did_not_slow_the_steps_leaves_the_slowdown_unexplained(
    nvml: FakeNvml
) -> None:
    # Every step is 30 % slow for a reason nothing measures; the clock drops to 60 % for
    # the last four, which are memory-bound and no slower than the first four. The job's
    # own full-clock steps are the control: the clock explains none of it.
    t, window = replay(nvml, clock_ratio=1.0, reason=fake_pynvml.SW_THERMAL,
                       throttle="sw_thermal", foreign=None, steps=[0.13] * 8,
                       ratios=[1.0] * 4 + [0.6] * 4)
    d = attribute(t, gpu_expectation(), window)
    assert d.cause(CLOCKS) is None
    assert d.unexplained_s == pytest.approx(0.24, abs=1e-6)


def test_an_idle_foreign_process_is_named_as_present_not_blamed(
    nvml: FakeNvml, foreign_pid: int
) -> None:
    # Another program holds 6 GiB but computes nothing (NVML's per-process utilisation
    # never lists it); the job is slow for an unmeasured reason.
    t, window = replay(nvml, clock_ratio=1.0, reason=0, throttle=None,
                       foreign=FakeProcess(pid=foreign_pid, used_bytes=6 << 30))
    d = attribute(t, gpu_expectation(), window)
    assert d.cause(FOREIGN) is None and d.causes == []
    note = next(n for n in d.notes if n.startswith("present on our GPU but idle"))
    assert f"pid {foreign_pid}" in note and "6.0 GiB" in note
    assert d.unexplained_s == pytest.approx(0.8)


def test_a_light_foreign_process_is_bounded_by_its_share_of_the_gpu(
    nvml: FakeNvml, foreign_pid: int
) -> None:
    # A process using 10 % of the SMs (and 5 % of memory bandwidth) cannot explain a
    # doubling of our steps: at most 10 % of our 1.6 s of steps.
    t, window = replay(nvml, clock_ratio=1.0, reason=0, throttle=None,
                       foreign=FakeProcess(pid=foreign_pid, used_bytes=2 << 30, sm_util=10,
                                           mem_util=5))
    d = attribute(t, gpu_expectation(), window)
    foreign = must(d, FOREIGN)
    assert foreign.details["gpu_share"] == pytest.approx(0.10)
    assert foreign.seconds == pytest.approx(0.1 * t.denoise_s)
    assert "bounded by its 10% share of the GPU" in foreign.evidence
    assert d.unexplained_s == pytest.approx(0.8 - 0.16)


def test_a_memory_heavy_foreign_process_is_sized_by_its_memory_traffic(
    nvml: FakeNvml, foreign_pid: int
) -> None:
    t, window = replay(nvml, clock_ratio=1.0, reason=0, throttle=None,
                       foreign=FakeProcess(pid=foreign_pid, sm_util=5, mem_util=30))
    foreign = must(attribute(t, gpu_expectation(), window), FOREIGN)
    assert foreign.details["gpu_share"] == pytest.approx(0.30)
    assert foreign.seconds == pytest.approx(0.3 * t.denoise_s)


def test_without_per_process_utilisation_the_step_excess_bounds_a_foreign_process(
    nvml: FakeNvml, foreign_pid: int
) -> None:
    nvml.devices[0].unsupported.add("nvmlDeviceGetProcessUtilization")  # e.g. MIG
    t, window = replay(nvml, clock_ratio=1.0, reason=0, throttle=None,
                       foreign=FakeProcess(pid=foreign_pid, sm_util=10))
    foreign = must(attribute(t, gpu_expectation(), window), FOREIGN)
    assert foreign.details["gpu_share"] is None
    assert "per-process utilisation not available" in foreign.evidence
    assert foreign.seconds == pytest.approx(0.8)


def test_in_a_container_our_own_process_is_not_blamed_as_foreign(nvml: FakeNvml) -> None:
    # NVML reports our process under the host's pid. Matched by our allocator's 19.5 GiB
    # reserved (NVML counts 20 GiB: the context on top), it is ours, not a foreign one.
    host_pid = 3_170_001
    reserved = (39 << 29)  # 19.5 GiB
    t, window = replay(nvml, clock_ratio=1.0, reason=0, throttle=None, foreign=None,
                       ours_pid=host_pid, own_gpu_bytes=lambda index: reserved)
    assert window.foreign_processes == []
    d = attribute(t, gpu_expectation(), window)
    assert d.cause(FOREIGN) is None and d.unexplained_s == pytest.approx(0.8)
    # the same trace without the allocator's figure blames ourselves: what this prevents
    t2, blind = replay(nvml, clock_ratio=1.0, reason=0, throttle=None, foreign=None,
                       ours_pid=host_pid)
    assert [p.pid for p in blind.foreign_processes] == [host_pid]
