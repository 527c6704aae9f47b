"""Cumulative counters read at job edges, and their differences over a job.

Counters beat polling for attribution: energy and per-reason throttle time are kept by the
driver, run-queue delay and PSI stall time by the kernel, so ``end - start`` is exact
whatever the sampling rate (and is there even with the sampler off).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

N = TypeVar("N", int, float)


@dataclass(frozen=True)
class GpuCounters:
    """One GPU's cumulative counters.

    ``energy_mj``: ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since the driver loaded).
    ``throttle_ns``: ``nvmlDeviceGetFieldValues`` NVML_FI_DEV_CLOCKS_EVENT_REASON_* (ns per
    reason; nvidia-smi ``clocks_event_reasons_counters.*``). Missing reasons are absent.
    """

    index: int
    energy_mj: int | None = None
    throttle_ns: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class HostCounters:
    """Our process's cumulative CPU-side counters."""

    cpu_seconds: float | None = None  # user + system
    run_delay_ns: int | None = None  # our threads' run-queue wait (schedstat field 2)
    psi_some_total_us: dict[str, int] = field(default_factory=dict)  # cpu / memory / io
    ctx_voluntary: int | None = None
    ctx_involuntary: int | None = None


@dataclass(frozen=True)
class EdgeCounters:
    """All counters read at one job edge."""

    t_mono: float
    host: HostCounters
    gpus: list[GpuCounters] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GpuDeltas:
    index: int
    energy_j: float | None
    throttle_s: dict[str, float]


@dataclass(frozen=True)
class CounterDeltas:
    """``end - start`` of two EdgeCounters, in seconds and joules. None where unknown."""

    duration_s: float
    cpu_s: float | None
    run_delay_s: float | None
    psi_stall_s: dict[str, float]
    ctx_voluntary: int | None
    ctx_involuntary: int | None
    gpus: list[GpuDeltas]

    def gpu(self, index: int) -> GpuDeltas | None:
        return next((g for g in self.gpus if g.index == index), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def between(cls, start: EdgeCounters, end: EdgeCounters) -> CounterDeltas:
        s, e = start.host, end.host
        psi = {
            k: (e.psi_some_total_us[k] - v) / 1e6
            for k, v in s.psi_some_total_us.items()
            if k in e.psi_some_total_us
        }
        start_gpus = {g.index: g for g in start.gpus}
        gpus = [
            _gpu_delta(start_gpus[g.index], g) for g in end.gpus if g.index in start_gpus
        ]
        return cls(
            duration_s=end.t_mono - start.t_mono,
            cpu_s=_sub(e.cpu_seconds, s.cpu_seconds),
            run_delay_s=_scaled(_sub(e.run_delay_ns, s.run_delay_ns), 1e-9),
            psi_stall_s=psi,
            ctx_voluntary=_sub(e.ctx_voluntary, s.ctx_voluntary),
            ctx_involuntary=_sub(e.ctx_involuntary, s.ctx_involuntary),
            gpus=gpus,
        )


def _gpu_delta(s: GpuCounters, e: GpuCounters) -> GpuDeltas:
    throttle = {
        k: (e.throttle_ns[k] - v) / 1e9 for k, v in s.throttle_ns.items() if k in e.throttle_ns
    }
    return GpuDeltas(
        index=e.index,
        energy_j=_scaled(_sub(e.energy_mj, s.energy_mj), 1e-3),
        throttle_s=throttle,
    )


def _sub(a: N | None, b: N | None) -> N | None:
    if a is None or b is None:
        return None
    return a - b


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor
