"""A job's telemetry: the samples between its two edges and the counter deltas across them."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from steadygen.telemetry.counters import CounterDeltas, EdgeCounters
from steadygen.telemetry.sample import REASON_NAMES, GpuProcess, Sample

TOP_FOREIGN = 5


def in_window(t: float, t0: float, t1: float) -> bool:
    """The one edge rule for job, phase and step windows: half-open, ``t0 <= t < t1``.

    A sample taken exactly on an edge belongs to the window that starts there, so two
    windows that touch never share a sample and every sample of a run is counted once.
    """
    return t0 <= t < t1


@dataclass(frozen=True)
class TelemetryWindow:
    """Samples with ``t_start <= t_mono < t_end`` (``in_window``) and the counters read at
    both edges."""

    job_id: str
    t_start: float  # time.monotonic() at the start edge
    t_end: float  # time.monotonic() at the end edge
    samples: list[Sample]
    start: EdgeCounters
    end: EdgeCounters
    processes: list[GpuProcess] = field(default_factory=list)  # seen, max memory per pid

    @property
    def deltas(self) -> CounterDeltas:
        return CounterDeltas.between(self.start, self.end)

    @property
    def foreign_processes(self) -> list[GpuProcess]:
        return [p for p in self.processes if not p.ours]

    def slice(self, t0: float, t1: float) -> list[Sample]:
        """The samples with ``t0 <= t_mono < t1`` (a step's or a phase's share)."""
        return [s for s in self.samples if in_window(s.t_mono, t0, t1)]

    def series(self, field_path: str) -> list[tuple[float, float]]:
        """(t_mono, value) pairs of one field, skipping samples where it is None.

        ``"host.cpu_util_pct"`` for a host field, ``"gpu.0.sm_clock_hz"`` for GPU 0's.
        """
        return series(self.samples, field_path)

    def summary(self) -> dict[str, Any]:
        """A compact, JSON-able account of the window for job records and the API."""
        d = self.deltas
        gpu_indices = sorted({g.index for s in self.samples for g in s.gpus}
                             | {g.index for g in d.gpus})
        return {
            "job_id": self.job_id,
            "duration_s": self.t_end - self.t_start,
            "n_samples": len(self.samples),
            "gpus": {str(i): _gpu_summary(self.samples, i, d) for i in gpu_indices},
            "foreign_gpu_processes": [
                {"gpu": p.gpu_index, "pid": p.pid, "name": p.name,
                 "max_used_bytes": p.used_bytes}
                for p in self.foreign_processes
            ],
            "host": {
                "cpu_s": d.cpu_s,
                "run_delay_s": d.run_delay_s,
                "psi_stall_s": d.psi_stall_s,
                "ctx_involuntary": d.ctx_involuntary,
                "cpu_util_pct": _stats(v for _, v in self.series("host.cpu_util_pct")),
                "top_foreign": top_foreign_by_name(self.samples),
            },
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "t_start": self.t_start,
            "t_end": self.t_end,
            "samples": [s.to_dict() for s in self.samples],
            "start": self.start.to_dict(),
            "end": self.end.to_dict(),
            "deltas": self.deltas.to_dict(),
            "processes": [p.to_dict() for p in self.processes],
        }


def series(samples: Iterable[Sample], field_path: str) -> list[tuple[float, float]]:
    """See ``TelemetryWindow.series``."""
    parts = field_path.split(".")
    out: list[tuple[float, float]] = []
    if parts[0] == "host" and len(parts) == 2:
        for s in samples:
            value = getattr(s.host, parts[1])
            if value is not None:
                out.append((s.t_mono, float(value)))
        return out
    if parts[0] == "gpu" and len(parts) == 3:
        index = int(parts[1])
        for s in samples:
            g = s.gpu(index)
            value = None if g is None else getattr(g, parts[2])
            if value is not None:
                out.append((s.t_mono, float(value)))
        return out
    raise ValueError(
        f"field path must be 'host.<field>' or 'gpu.<index>.<field>' (got {field_path!r})"
    )


def merge_processes(lists: Iterable[Sequence[GpuProcess] | None]) -> list[GpuProcess]:
    """One entry per (gpu, pid), keeping the largest memory seen."""
    seen: dict[tuple[int, int], GpuProcess] = {}
    for procs in lists:
        for p in procs or ():
            key = (p.gpu_index, p.pid)
            old = seen.get(key)
            if old is None or (p.used_bytes or 0) > (old.used_bytes or 0):
                seen[key] = p
    return sorted(seen.values(), key=lambda p: (p.gpu_index, p.pid))


def top_foreign_by_name(samples: Sequence[Sample], n: int = TOP_FOREIGN) -> list[dict[str, Any]]:
    """Foreign host processes grouped by name: mean and max CPU % over the samples."""
    total: dict[str, float] = defaultdict(float)
    peak: dict[str, float] = defaultdict(float)
    for s in samples:
        per_name: dict[str, float] = defaultdict(float)
        for p in s.host.top_foreign:
            per_name[p.name] += p.cpu_pct
        for name, pct in per_name.items():
            total[name] += pct
            peak[name] = max(peak[name], pct)
    count = max(1, len(samples))
    ranked = sorted(total, key=lambda k: total[k], reverse=True)[:n]
    return [
        {"name": k, "mean_cpu_pct": round(total[k] / count, 1), "max_cpu_pct": round(peak[k], 1)}
        for k in ranked
    ]


def _gpu_summary(samples: Sequence[Sample], index: int, d: CounterDeltas) -> dict[str, Any]:
    readings = [g for s in samples if (g := s.gpu(index)) is not None]
    masked = [g for g in readings if g.clock_event_mask is not None]
    fractions = {
        name: round(sum(name in g.clock_events for g in masked) / len(masked), 3)
        for name in REASON_NAMES
    } if masked else {}
    gd = d.gpu(index)
    return {
        "sm_clock_hz": _stats(g.sm_clock_hz for g in readings),
        "sm_clock_max_hz": next((g.sm_clock_max_hz for g in readings if g.sm_clock_max_hz), None),
        "temp_c": _stats(g.temp_c for g in readings),
        "power_w": _stats(g.power_w for g in readings),
        "util_gpu_pct": _stats(g.util_gpu_pct for g in readings),
        "clock_event_fraction": {k: v for k, v in fractions.items() if v > 0},
        "energy_j": None if gd is None else gd.energy_j,
        "throttle_s": {} if gd is None else gd.throttle_s,
    }


def _stats(values: Iterable[float | None]) -> dict[str, float] | None:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    return {"min": min(vals), "median": statistics.median(vals), "max": max(vals)}
