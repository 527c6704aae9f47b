"""Synthetic jobs for attribution unit tests: Timings with phase marks and step ends, an
Expectation, a TelemetryWindow with counters, and a scripted host backend for the Sampler."""

from __future__ import annotations

from dataclasses import dataclass, field

from steadygen.analysis.baseline import WAIT_PER_CPU, Expectation, ShapeKey
from steadygen.engine.timings import Timings
from steadygen.telemetry import (
    EdgeCounters,
    ForeignCpuProcess,
    GpuProcess,
    HostCounters,
    HostReading,
    Sample,
    TelemetryWindow,
)

KEY = ShapeKey("zimage-tiny", 256, 256, 8, False, 1, "cpu")
T0 = 100.0


def timings(
    steps: list[float], *, encode: float = 0.05, prepare: float = 0.01, decode: float = 0.1,
    save: float = 0.04, memory: float = 0.0, queue: float = 0.0, t0: float = T0,
    first_of_shape: bool = False, load: float = 0.0, warmup: float = 0.0,
) -> Timings:
    """A finished job whose phases follow one another from ``t0`` (monotonic seconds)."""
    t = Timings(load_s=load, warmup_s=warmup, encode_s=encode, prepare_s=prepare,
                steps_s=list(steps), decode_s=decode, save_s=save, memory_s=memory,
                queue_wait_s=queue, first_of_shape=first_of_shape)
    marks = {"start": t0}
    marks["encode_end"] = t0 + load + warmup + encode
    marks["prepare_end"] = marks["encode_end"] + prepare
    ends, at = [], marks["prepare_end"]
    for s in steps:
        at += s
        ends.append(at)
    marks["denoise_end"] = at
    marks["decode_end"] = at + decode
    marks["save_end"] = marks["decode_end"] + save
    marks["end"] = marks["save_end"] + memory
    t.marks, t.step_ends = marks, ends
    t.total_s = marks["end"] - t0
    return t


def expectation(
    step_s: float = 0.1, steps: int = 8, *, encode: float = 0.05, prepare: float = 0.01,
    decode: float = 0.1, save: float = 0.04, memory: float = 0.0, runs: int = 20,
    signals: dict[str, float] | None = None, spread: dict[str, float] | None = None,
    exact: bool = True,
) -> Expectation:
    phases = {"encode": encode, "prepare": prepare, "steps": step_s * steps, "decode": decode,
              "save": save, "memory": memory, "other": 0.0}
    return Expectation(key=KEY, runs=runs, total_s=sum(phases.values()), step_s=step_s,
                       phases=phases, exact=exact, signals=dict(signals or {}),
                       spread=dict(spread or {}))


def cpu_signals(run_delay_s: float, cpu_s: float) -> dict[str, float]:
    """Baseline signals of a shape whose runs waited ``run_delay_s`` for ``cpu_s`` of CPU."""
    return {"run_delay_s": run_delay_s, "cpu_s": cpu_s, WAIT_PER_CPU: run_delay_s / cpu_s}


def host_window(
    t: Timings, *, run_delay_s: float, cpu_s: float, competitors: tuple[tuple[int, str, float],
                                                                        ...] = (),
    cpu_count: int = 2, gpu_processes: list[GpuProcess] | None = None,
) -> TelemetryWindow:
    """A window over ``t`` with host counters and samples every 50 ms (no GPU)."""
    start, end = t.marks["start"], t.marks["end"]
    top = tuple(ForeignCpuProcess(pid, name, pct) for pid, name, pct in competitors)
    samples, at = [], start
    while at <= end:
        samples.append(Sample(t_mono=at, t_wall=1.7e9 + at, host=HostReading(
            cpu_count=cpu_count, top_foreign=top)))
        at += 0.05
    return TelemetryWindow(
        job_id="j", t_start=start, t_end=end, samples=samples,
        start=EdgeCounters(start, HostCounters(cpu_seconds=10.0, run_delay_ns=10**9)),
        end=EdgeCounters(end, HostCounters(cpu_seconds=10.0 + cpu_s,
                                           run_delay_ns=10**9 + round(run_delay_s * 1e9))),
        processes=list(gpu_processes or []),
    )


@dataclass
class ScriptedHost:
    """A HostBackend for the Sampler whose counters the test sets (no real /proc reads,
    so the machine's own load cannot leak into a replayed trace)."""

    cpu_s: float = 0.0
    run_delay_ns: int = 0
    cpu_count: int = 16
    top_foreign: tuple[ForeignCpuProcess, ...] = ()
    reads: list[str] = field(default_factory=list)

    def read_host(self, scan: bool | None = None) -> HostReading:
        self.reads.append("host")
        return HostReading(cpu_seconds=self.cpu_s, run_delay_ns=self.run_delay_ns,
                           cpu_count=self.cpu_count, cpu_util_pct=20.0,
                           top_foreign=self.top_foreign)

    def read_counters(self) -> HostCounters:
        self.reads.append("counters")
        return HostCounters(cpu_seconds=self.cpu_s, run_delay_ns=self.run_delay_ns)
