"""Host CPU contention: our threads waited for a CPU past what this machine's clean runs wait.

The measure is the kernel's own: run-queue delay of our threads (schedstat), per CPU second
our process ran. A job is contended when that wait is past the calibration of the shape's
baseline (``CpuCalibration``: the clean runs' median plus four robust sigmas, and never
below their 90th percentile), which holds on a quiet 16-core workstation and on a shared
2-core VM alike, because each machine sets its own bar. The cost is the extra delay over
what the job's CPU use usually waits, divided by the parallelism a clean run of the shape
has (one waiting thread among p busy ones costs 1/p of its wait in wall time), capped by
what is left of the excess. Named only when that cost is past the noise floor.

Competitors are the other processes the host scan saw busiest during the job; one whose
CPU affinity does not meet ours cannot take our CPUs and is left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from steadygen.analysis.baseline import (
    WAIT_PER_CPU,
    CpuCalibration,
    Expectation,
    cpu_calibration,
    wait_per_cpu,
)
from steadygen.analysis.causes import CPU, Cause

MIN_COMPETITOR_PCT = 5.0  # a foreign process below this CPU share is not a competitor


def cpu_cause(exp: Expectation, window: Any, left: float, ctx: Sequence[Any]) -> Cause | None:
    """The CPU-contention cause of one job, or None when its wait is within calibration."""
    d = window.deltas
    if d.run_delay_s is None:
        return None
    wait = wait_per_cpu(d.run_delay_s, d.cpu_s)
    cal = cpu_calibration(exp, WAIT_PER_CPU) if wait is not None else None
    if cal is not None and wait is not None:
        value, expected_delay = wait, cal.usual * (d.cpu_s or 0.0)
    else:  # no CPU seconds: compare the delays themselves
        cal = cpu_calibration(exp, "run_delay_s")
        value, expected_delay = d.run_delay_s, (cal.usual if cal else 0.0)
    if cal is None or not cal.calibrated or value <= cal.limit:
        return None
    extra_delay = d.run_delay_s - expected_delay
    if extra_delay <= 0:
        return None
    usable = usable_cpus(window)
    clean_cpu = exp.signals.get("cpu_s")
    parallel = clean_cpu / exp.total_s if clean_cpu and exp.total_s else 1.0
    parallel = min(max(parallel, 1.0), float(usable))
    seconds = min(extra_delay / parallel, left)
    ours = own_affinity(window)
    names = competitors(list(window.samples) + list(ctx), ours)
    psi = d.psi_stall_s.get("cpu") if d.psi_stall_s else None
    own_busy = d.cpu_s / d.duration_s if d.cpu_s and d.duration_s > 0 else None
    evidence = _evidence(d.run_delay_s, value, cal, extra_delay, parallel, usable, own_busy,
                         psi, names)
    return Cause(CPU, seconds, evidence, {
        "run_delay_s": d.run_delay_s, "baseline_run_delay_s": exp.signals.get("run_delay_s"),
        "wait_per_cpu": wait, "baseline_wait_per_cpu": exp.signals.get(WAIT_PER_CPU),
        "wait_per_cpu_limit": cal.limit if cal.signal == WAIT_PER_CPU else None,
        "calibration": cal.to_dict(), "extra_run_delay_s": extra_delay,
        "parallelism": parallel, "usable_cpus": usable, "competitors": names,
        "psi_cpu_stall_s": psi, "own_cpus_busy": own_busy,
    })


def _evidence(delay: float, value: float, cal: CpuCalibration, extra: float, parallel: float,
              usable: int, own_busy: float | None, psi: float | None,
              names: list[dict[str, Any]]) -> str:
    if cal.signal == WAIT_PER_CPU:
        text = f"our threads waited {delay:.3f} s for a CPU, {value:.2f} s per CPU second"
    else:
        text = f"our threads waited {delay:.3f} s for a CPU"
    text += f" ({cal.describe()}); {extra:.3f} s extra over {parallel:.1f} busy threads"
    if own_busy is not None and own_busy >= 0.75 * usable:
        text += (f"; our own process kept {own_busy:.1f} of {usable} CPUs busy "
                 "(our concurrent jobs compete too)")
    if psi is not None:
        text += f"; CPU pressure stalled tasks {psi:.3f} s"
    if names:
        text += "; competing: " + ", ".join(
            f"{n['name']} (pid {', '.join(map(str, n['pids']))}: {n['cpu_pct']:.0f}%)"
            for n in names
        )
    return text


def own_affinity(window: Any) -> set[int] | None:
    for s in window.samples:
        if getattr(s.host, "cpu_affinity", None):
            return set(s.host.cpu_affinity)
    return None


def usable_cpus(window: Any) -> int:
    """The CPUs our process may run on (its affinity), else the host's count."""
    ours = own_affinity(window)
    if ours:
        return len(ours)
    for s in window.samples:
        if s.host.cpu_count:
            return int(s.host.cpu_count)
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


def competitors(
    samples: Sequence[Any], ours: set[int] | None = None, n: int = 3
) -> list[dict[str, Any]]:
    """Other processes by name, with their pids and their largest CPU share in one scan
    (summed over the processes of that name: two burners at 90 % read 180 %). A process
    whose affinity is known and does not meet ``ours`` is left out; one confined to our
    CPUs ranks first (it can only compete with us), then by CPU share."""
    best: dict[str, float] = {}
    pids: dict[str, set[int]] = {}
    confined: set[str] = set()
    for s in samples:
        per_name: dict[str, float] = {}
        for p in s.host.top_foreign:
            cpus = getattr(p, "cpu_affinity", None)
            if ours and cpus is not None and not ours & set(cpus):
                continue
            per_name[p.name] = per_name.get(p.name, 0.0) + p.cpu_pct
            if p.cpu_pct >= MIN_COMPETITOR_PCT:
                pids.setdefault(p.name, set()).add(p.pid)
                if ours and cpus is not None and set(cpus) <= ours:
                    confined.add(p.name)
        for name, pct in per_name.items():
            best[name] = max(best.get(name, 0.0), pct)
    ranked = sorted(best.items(), key=lambda kv: (kv[0] not in confined, -kv[1]))
    return [{"name": k, "cpu_pct": v, "pids": sorted(pids.get(k, ())),
             "confined_to_our_cpus": k in confined}
            for k, v in ranked[:n] if v >= MIN_COMPETITOR_PCT]
