"""GPU causes: a lowered SM clock, and other processes computing on our GPU.

Clocks. A compute-bound step scales with 1/SM clock, but a memory-bound one does not, and
a clock can drop between two steps. So the clock is booked per step, and only for what the
step really lost: at most the compute-bound prediction ``base_step x (base_clock / clock -
1)``, and at most the step's own excess over the baseline beyond the excess the job's
full-clock steps show (those are the job's control: what slowed them was not the clock).
Steps that did not slow with the clock leave their time unexplained, and the evidence
says how much of the compute-bound prediction the steps showed.

Foreign processes. A process on our GPU can take at most the share of the SMs (or of the
memory bandwidth) it was sampled using, per process, by NVML
(``nvmlDeviceGetProcessUtilization``: smUtil, memUtil). Its cost is bounded by that share
of our step time; a process that only holds memory is named as present in a note and not
blamed. Where per-process utilisation is not available, the step excess bounds it alone,
and the evidence says so.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from steadygen.analysis.baseline import Expectation
from steadygen.analysis.causes import CLOCKS, FOREIGN, Cause
from steadygen.telemetry.window import in_window

FULL_CLOCK = 0.98  # a step within 2 % of the baseline's clock ran at full clock

_REASON_WORDS = {
    "sw_thermal": "thermal (software slowdown)",
    "hw_thermal": "thermal (hardware slowdown)",
    "sw_power_cap": "power cap",
    "hw_power_brake": "power brake (external)",
    "hw_slowdown": "hardware slowdown",
    "sync_boost": "sync boost",
    "applications_clocks": "application clocks setting",
}


def step_edges(t: Any) -> list[tuple[float, float]]:
    start = t.marks.get("prepare_end")
    if start is None or not t.step_ends:
        return []
    edges = [start, *t.step_ends]
    return list(zip(edges, edges[1:], strict=False))


def clock_cause(t: Any, exp: Expectation, window: Any, left: float, gpu: int) -> Cause | None:
    base = exp.signals.get("sm_clock_hz")
    clocks = window.series(f"gpu.{gpu}.sm_clock_hz")
    if not base or not clocks or exp.step_s <= 0:
        return None
    per_step: list[tuple[float, float]] = []  # (clock, step seconds)
    for (a, b), step_s in zip(step_edges(t), t.steps_s, strict=False):
        c = mean_in(clocks, a, b)
        if c is not None and c > 0:
            per_step.append((c, step_s))
    slowed = [(c, s) for c, s in per_step if c < FULL_CLOCK * base]
    if not slowed:
        return None
    full = [s / exp.step_s - 1.0 for c, s in per_step if c >= FULL_CLOCK * base]
    control = max(0.0, statistics.median(full)) if full else 0.0
    predicted = booked = 0.0
    for c, s in slowed:
        would = base / c - 1.0  # a compute-bound step's extra time, as a share of its base
        seen = s / exp.step_s - 1.0 - control
        predicted += exp.step_s * would
        booked += exp.step_s * min(would, max(0.0, seen))
    job_clock = statistics.median(c for c, _ in slowed)
    reason, reason_evidence = clock_reason(window, gpu)
    fit = booked / predicted if predicted > 0 else 0.0
    evidence = (
        f"SM clock {job_clock / 1e6:.0f} MHz against {base / 1e6:.0f} MHz in the baseline "
        f"in {len(slowed)} of {len(per_step)} steps; compute-bound they would lose "
        f"{predicted:.3f} s, their times show {booked:.3f} s of it"
    )
    if full:
        evidence += f" (beyond the {control:.0%} the job's full-clock steps were slow)"
    if reason_evidence:
        evidence += f"; reason: {reason_evidence}"
    return Cause(CLOCKS, min(booked, left), evidence, {
        "sm_clock_hz": job_clock, "baseline_sm_clock_hz": base, "reason": reason,
        "steps_at_lower_clock": len(slowed), "steps": len(per_step),
        "compute_bound_loss_s": predicted, "observed_loss_s": booked,
        "clock_model_fit": fit, "full_clock_step_excess": control,
    })


def clock_reason(window: Any, gpu: int) -> tuple[str | None, str]:
    d = window.deltas.gpu(gpu)
    throttled = {k: v for k, v in (d.throttle_s if d else {}).items() if v and v > 0}
    if throttled:
        name = max(throttled, key=lambda k: throttled[k])
        return name, f"{_REASON_WORDS.get(name, name)}, {throttled[name]:.2f} s throttled"
    counts: dict[str, int] = {}
    for s in window.samples:
        g = s.gpu(gpu)
        for name in g.clock_events if g is not None else ():
            if name in _REASON_WORDS:
                counts[name] = counts.get(name, 0) + 1
    if not counts:
        return None, ""
    name = max(counts, key=lambda k: counts[k])
    share = counts[name] / max(1, len(window.samples))
    return name, f"{_REASON_WORDS[name]} active in {share:.0%} of samples"


def foreign_cause(
    t: Any, exp: Expectation, window: Any, left: float, gpu: int
) -> tuple[Cause | None, list[str]]:
    """The foreign-process cause (or None) and notes on processes present but idle."""
    foreign = [p for p in window.foreign_processes if p.gpu_index == gpu]
    if not foreign:
        return None, []
    shares = _busy_shares(window, gpu)
    busy, idle = [], []
    for p in foreign:
        share = shares.get(p.pid)
        (idle if share is not None and share <= 0 else busy).append((p, share))
    notes = []
    if idle:
        notes.append("present on our GPU but idle (memory only, not blamed): "
                     + ", ".join(_who(p, s) for p, s in idle))
    if not busy:
        return None, notes
    step_excess = max(0.0, t.denoise_s - exp.step_s * len(t.steps_s))
    known = [s for _, s in busy if s is not None]
    if len(known) == len(busy):
        share = min(1.0, sum(known))
        bound = share * t.denoise_s  # the SM (or memory) time it held during our steps
        how = f"bounded by its {share:.0%} share of the GPU: {bound:.3f} s of our steps"
    else:
        share, bound = None, step_excess
        how = "per-process utilisation not available: bounded by the step excess only"
    seconds = min(left, step_excess, bound)
    who = ", ".join(_who(p, s) for p, s in busy)
    return Cause(FOREIGN, seconds, f"other processes computed on our GPU: {who}; {how}", {
        "processes": [{"pid": p.pid, "name": p.name, "used_bytes": p.used_bytes,
                       "sm_util_pct": p.sm_util_pct,
                       "mem_util_pct": getattr(p, "mem_util_pct", None),
                       "gpu_share": s} for p, s in busy],
        "gpu_share": share, "share_bound_s": bound, "step_excess_s": step_excess,
    }), notes


def _busy_shares(window: Any, gpu: int) -> dict[int, float]:
    """Per foreign pid: the mean over the window's process lists of max(SM %, memory %)/100;
    a pid is absent when no list gave it a utilisation."""
    values: dict[int, list[float]] = {}
    lists = [s.processes for s in window.samples if s.processes is not None]
    lists.append(window.processes)
    for procs in lists:
        for p in procs:
            if p.ours or p.gpu_index != gpu:
                continue
            util = [u for u in (p.sm_util_pct, getattr(p, "mem_util_pct", None))
                    if u is not None]
            if util:
                values.setdefault(p.pid, []).append(max(util) / 100.0)
    return {pid: statistics.fmean(v) for pid, v in values.items()}


def _who(p: Any, share: float | None) -> str:
    return (f"{p.name or '?'} (pid {p.pid}"
            + (f", {p.used_bytes / 2**30:.1f} GiB" if p.used_bytes else "")
            + (f", {share:.0%} of the GPU" if share is not None else "")
            + ")")


def mean_in(series: Sequence[tuple[float, float]], a: float, b: float) -> float | None:
    """The mean over ``[a, b)`` (the edge rule of ``in_window``); for a step shorter than
    the sampling period, the latest value before its end."""
    inside = [v for t, v in series if in_window(t, a, b)]
    if inside:
        return sum(inside) / len(inside)
    before = [v for t, v in series if t < b]
    return before[-1] if before else None
