"""Why was this generation slow? Split a job's excess time into causes, each in seconds with
its evidence, and keep an honest unexplained remainder.

excess = (queue wait + service) - expected service, where the expectation is the shape's
baseline (a robust median of warm runs) without the memory-management overhead that it may
include. Then, in order:

1. queue wait, cold start (load, warm-up or compile paid in the job, the first run of a
   shape) and memory management (per-request cache emptying) are measured directly;
2. the rest of the service excess is sized from the job's own signals against the baseline's:
   - GPU clocks: each step's time against its mean SM clock (a compute-bound step scales
     with 1/clock), with the reason from clock-event bits and throttle-time counters;
   - host CPU contention: named only when our threads' run-queue delay per CPU second is
     past the baseline's usual by its spread (2.5x at least: a shared machine always waits
     some); sized as the delay beyond the usual, divided by the parallelism a clean run of
     this shape has (the wall-clock cost of one waiting thread among p);
   - foreign GPU processes: what remains of the step excess while another process computed
     on our GPU;
3. unexplained = excess - the causes, never forced to zero (negative: faster than expected).
   A signal seen in a job that was not slower than expected is kept as a note, not a cause.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from steadygen.analysis.baseline import (
    K_SPREAD,
    REL_WAIT,
    WAIT_PER_CPU,
    Expectation,
    ShapeKey,
    cpu_wait_threshold,
    wait_per_cpu,
)
from steadygen.engine.timings import Timings
from steadygen.telemetry.window import in_window

QUEUE = "queue_wait"
COLD = "cold_start"
CLOCKS = "gpu_clocks"
FOREIGN = "foreign_gpu_process"
CPU = "cpu_contention"
MEMORY = "memory_management"
CAUSES = (QUEUE, COLD, CLOCKS, FOREIGN, CPU, MEMORY)

# A cause is named only past this share of the expected service time (and 2 ms), so that
# scheduling noise on a clean run does not read as a cause.
MIN_SHARE = 0.05
MIN_SECONDS = 0.002
MIN_COMPETITOR_PCT = 5.0  # a foreign process below this CPU share is not a competitor

_REASON_WORDS = {
    "sw_thermal": "thermal (software slowdown)",
    "hw_thermal": "thermal (hardware slowdown)",
    "sw_power_cap": "power cap",
    "hw_power_brake": "power brake (external)",
    "hw_slowdown": "hardware slowdown",
    "sync_boost": "sync boost",
    "applications_clocks": "application clocks setting",
}


@dataclass(frozen=True)
class Cause:
    kind: str
    seconds: float
    evidence: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Diagnosis:
    actual_s: float
    expected_s: float | None
    excess_s: float | None
    slow: bool
    causes: list[Cause]
    unexplained_s: float | None
    baseline_runs: int = 0
    baseline_exact: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def main_cause(self) -> str | None:
        best = max(self.causes, key=lambda c: c.seconds, default=None)
        return best.kind if best is not None else None

    def cause(self, kind: str) -> Cause | None:
        return next((c for c in self.causes if c.kind == kind), None)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["main_cause"] = self.main_cause
        return out

    def log_line(self, job_id: str) -> str:
        parts = ", ".join(f"{c.kind} {c.seconds:.2f} s" for c in self.causes) or "no cause found"
        expected = f"{self.expected_s:.2f}" if self.expected_s is not None else "?"
        unexplained = f"{self.unexplained_s:.2f}" if self.unexplained_s is not None else "?"
        return (
            f"slow job {job_id}: {self.actual_s:.2f} s against {expected} s expected: "
            f"{parts}; unexplained {unexplained} s"
        )


def signals_of(window: Any, gpu_index: int = 0) -> dict[str, float]:
    """The per-job signals a baseline keeps: run-queue delay, CPU seconds, median SM clock."""
    out: dict[str, float] = {}
    if window is None:
        return out
    d = window.deltas
    if d.run_delay_s is not None:
        out["run_delay_s"] = d.run_delay_s
    if d.cpu_s is not None:
        out["cpu_s"] = d.cpu_s
    clocks = [v for _, v in window.series(f"gpu.{gpu_index}.sm_clock_hz")]
    if clocks:
        out["sm_clock_hz"] = statistics.median(clocks)
    return out


def attribute(
    timings: Timings,
    expectation: Expectation | None,
    window: Any = None,
    *,
    slow_margin: float = 0.25,
    gpu_index: int = 0,
    recompiles: int = 0,
    context: Sequence[Any] = (),
    empty_cache_per_request: bool = False,
) -> Diagnosis:
    """Diagnose one finished job. ``window`` is its TelemetryWindow (or None when the
    sampler is off); ``context`` is a few samples around it (for host process names)."""
    service = timings.total_s
    actual = timings.queue_wait_s + service
    causes: list[Cause] = []
    notes: list[str] = []

    # 1. Measured directly.
    if timings.queue_wait_s > MIN_SECONDS:
        causes.append(Cause(QUEUE, timings.queue_wait_s,
                            f"waited {timings.queue_wait_s:.2f} s in the queue before starting"))
    memory_s = timings.memory_s
    if memory_s > MIN_SECONDS:
        what = "per-request cache emptying" if empty_cache_per_request else "memory release"
        causes.append(Cause(MEMORY, memory_s, f"{what} took {memory_s:.3f} s after the images",
                            {"empty_cache_per_request": empty_cache_per_request}))

    if expectation is None:
        cold = timings.load_s + timings.warmup_s
        if cold > MIN_SECONDS or timings.first_of_shape:
            causes.append(_cold_cause(cold, timings, recompiles, None))
        notes.append("no baseline for this shape yet: expectations start after warm runs")
        return Diagnosis(actual, None, None, False, _named(causes, service), None, notes=notes)

    mem_expected = expectation.phases.get("memory", 0.0)
    expected = max(1e-9, expectation.total_s - mem_expected)
    excess = actual - expected
    cold = timings.load_s + timings.warmup_s
    if timings.first_of_shape:
        # The first run of a shape pays cuDNN/compile/allocator set-up in its steps.
        cold = max(cold, service - memory_s - expected)
    if cold > MIN_SECONDS or timings.first_of_shape:  # a first run is named even when cheap
        causes.append(_cold_cause(cold, timings, recompiles, expectation))

    # 2. Sized from the job's own signals, within what is left of the service excess.
    left = service - expected - memory_s - cold
    if window is not None:
        for sizer in (_clock_cause, _cpu_cause, _foreign_cause):
            cause = sizer(timings, expectation, window, max(left, 0.0), gpu_index, context)
            if cause is None:
                continue
            if cause.seconds > 0:
                causes.append(cause)
                left -= cause.seconds
            else:  # seen, but the job was not slower than its expectation for it
                notes.append(f"{cause.kind} seen without cost: {cause.evidence}")
    named = _named(causes, expected)
    unexplained = excess - sum(c.seconds for c in named)
    slow = actual > expected * (1 + slow_margin)
    if not expectation.exact:
        notes.append(f"expectation scaled from another shape ({expectation.key.label()})")
    return Diagnosis(
        actual_s=actual,
        expected_s=expected,
        excess_s=excess,
        slow=slow,
        causes=sorted(named, key=lambda c: -c.seconds),
        unexplained_s=unexplained,
        baseline_runs=expectation.runs,
        baseline_exact=expectation.exact,
        notes=notes,
    )


def _named(causes: list[Cause], expected_s: float) -> list[Cause]:
    """The causes worth naming: past the noise floor, and always a cold start and the
    cache emptying that the settings asked for (both known for certain, whatever they cost)."""
    floor = max(MIN_SECONDS, MIN_SHARE * expected_s)
    return [c for c in causes if c.seconds >= floor or c.kind == COLD
            or (c.kind == MEMORY and c.details.get("empty_cache_per_request"))]


def _cold_cause(
    seconds: float, t: Timings, recompiles: int, exp: Expectation | None
) -> Cause:
    bits = []
    if t.load_s > 0:
        bits.append(f"model load {t.load_s:.2f} s")
    if t.warmup_s > 0:
        bits.append(f"warm-up or compile {t.warmup_s:.2f} s")
    if recompiles:
        bits.append(f"{recompiles} recompile(s)")
    if t.first_of_shape:
        bits.append("first run of this shape in this process")
    return Cause(COLD, max(0.0, seconds), "; ".join(bits) or "cold start",
                 {"load_s": t.load_s, "warmup_s": t.warmup_s, "recompiles": recompiles,
                  "first_of_shape": t.first_of_shape})


def _step_edges(t: Timings) -> list[tuple[float, float]]:
    start = t.marks.get("prepare_end")
    if start is None or not t.step_ends:
        return []
    edges = [start, *t.step_ends]
    return list(zip(edges, edges[1:], strict=False))


def _clock_cause(
    t: Timings, exp: Expectation, window: Any, left: float, gpu: int, _ctx: Sequence[Any]
) -> Cause | None:
    base = exp.signals.get("sm_clock_hz")
    clocks = window.series(f"gpu.{gpu}.sm_clock_hz")
    if not base or not clocks:
        return None
    lost = 0.0
    per_step = []
    for (a, b), step_s in zip(_step_edges(t), t.steps_s, strict=False):
        c = _mean_in(clocks, a, b)
        if c is None:
            continue
        per_step.append(c)
        if c < base:
            lost += step_s * (1.0 - c / base)  # compute-bound: time scales with 1/clock
    if lost <= 0:
        return None
    seconds = min(lost, left)
    job_clock = statistics.median(per_step)
    reason, reason_evidence = _clock_reason(window, gpu)
    return Cause(
        CLOCKS,
        seconds,
        f"SM clock {job_clock / 1e6:.0f} MHz against {base / 1e6:.0f} MHz in the baseline"
        + (f"; reason: {reason_evidence}" if reason_evidence else ""),
        {"sm_clock_hz": job_clock, "baseline_sm_clock_hz": base, "reason": reason},
    )


def _clock_reason(window: Any, gpu: int) -> tuple[str | None, str]:
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


def _cpu_cause(
    t: Timings, exp: Expectation, window: Any, left: float, _gpu: int, ctx: Sequence[Any]
) -> Cause | None:
    """Host CPU contention, named only when our threads waited for a CPU, per CPU second
    they ran, past the baseline's usual wait by its own spread (``cpu_wait_threshold``): on
    a shared machine some waiting is normal, and the baseline's runs say how much."""
    d = window.deltas
    if d.run_delay_s is None:
        return None
    base_delay = exp.signals.get("run_delay_s", 0.0)
    wait, usual, limit = wait_per_cpu(d.run_delay_s, d.cpu_s), exp.signals.get(WAIT_PER_CPU), None
    if wait is not None and usual is not None:
        limit = cpu_wait_threshold(exp)
        if limit is None or wait <= limit:
            return None
        expected_delay = usual * (d.cpu_s or 0.0)  # what this job's CPU use usually waits
    else:  # no CPU seconds: compare the delays themselves
        expected_delay = base_delay
        if d.run_delay_s <= base_delay + max(
            K_SPREAD * exp.spread.get("run_delay_s", 0.0), REL_WAIT * base_delay
        ):
            return None
    extra_delay = d.run_delay_s - expected_delay
    if extra_delay <= 0:
        return None
    clean_cpu = exp.signals.get("cpu_s")
    parallel = clean_cpu / exp.total_s if clean_cpu and exp.total_s else 1.0
    parallel = min(max(parallel, 1.0), float(_cpu_count(window)))
    seconds = min(extra_delay / parallel, left)
    names = _foreign_cpu_names(list(window.samples) + list(ctx))
    psi = d.psi_stall_s.get("cpu") if d.psi_stall_s else None
    evidence = f"our threads waited {d.run_delay_s:.3f} s for a CPU"
    if wait is not None and usual is not None and limit is not None:
        evidence += (f", {wait:.2f} s per CPU second against {usual:.2f} s usually "
                     f"(contended past {limit:.2f})")
    else:
        evidence += f" (baseline {base_delay:.3f} s)"
    evidence += f"; {extra_delay:.3f} s extra over {parallel:.1f} busy threads"
    cpus = _cpu_count(window)
    own_busy = d.cpu_s / d.duration_s if d.cpu_s and d.duration_s > 0 else None
    if own_busy is not None and own_busy >= 0.75 * cpus:
        evidence += (f"; our own process kept {own_busy:.1f} of {cpus} CPUs busy "
                     "(our concurrent jobs compete too)")
    if psi is not None:
        evidence += f"; CPU pressure stalled tasks {psi:.3f} s"
    if names:
        evidence += "; competing: " + ", ".join(
            f"{n['name']} (pid {', '.join(map(str, n['pids']))}: {n['cpu_pct']:.0f}%)"
            for n in names
        )
    return Cause(CPU, seconds, evidence, {
        "run_delay_s": d.run_delay_s, "baseline_run_delay_s": exp.signals.get("run_delay_s"),
        "wait_per_cpu": wait, "baseline_wait_per_cpu": usual, "wait_per_cpu_limit": limit,
        "extra_run_delay_s": extra_delay, "parallelism": parallel, "competitors": names,
        "psi_cpu_stall_s": psi, "own_cpus_busy": own_busy,
    })


def _foreign_cause(
    t: Timings, exp: Expectation, window: Any, left: float, _gpu: int, _ctx: Sequence[Any]
) -> Cause | None:
    foreign = window.foreign_processes
    if not foreign:
        return None
    busy = [p for p in foreign if p.sm_util_pct is None or p.sm_util_pct > 0]
    if not busy:
        return None
    who = ", ".join(
        f"{p.name or '?'} (pid {p.pid}"
        + (f", {p.used_bytes / 2**30:.1f} GiB" if p.used_bytes else "")
        + (f", {p.sm_util_pct:.0f}% SM" if p.sm_util_pct is not None else "")
        + ")"
        for p in busy
    )
    step_excess = t.denoise_s - exp.step_s * len(t.steps_s)
    seconds = min(left, max(step_excess, 0.0)) if step_excess > 0 else 0.0
    return Cause(FOREIGN, seconds, f"other processes computed on our GPU: {who}", {
        "processes": [{"pid": p.pid, "name": p.name, "used_bytes": p.used_bytes,
                       "sm_util_pct": p.sm_util_pct} for p in busy],
    })


def _mean_in(series: list[tuple[float, float]], a: float, b: float) -> float | None:
    """The mean over ``[a, b)`` (the edge rule of ``in_window``); for a step shorter than
    the sampling period, the latest value before its end."""
    inside = [v for t, v in series if in_window(t, a, b)]
    if inside:
        return sum(inside) / len(inside)
    before = [v for t, v in series if t < b]
    return before[-1] if before else None


def _cpu_count(window: Any) -> int:
    for s in window.samples:
        if s.host.cpu_count:
            return int(s.host.cpu_count)
    import os

    return os.cpu_count() or 1


def _foreign_cpu_names(samples: Sequence[Any], n: int = 3) -> list[dict[str, Any]]:
    """Other processes by name, with their pids and their largest CPU share in one scan
    (summed over the processes of that name: two burners at 90 % read 180 %)."""
    best: dict[str, float] = {}
    pids: dict[str, set[int]] = {}
    for s in samples:
        per_name: dict[str, float] = {}
        for p in s.host.top_foreign:
            per_name[p.name] = per_name.get(p.name, 0.0) + p.cpu_pct
            if p.cpu_pct >= MIN_COMPETITOR_PCT:
                pids.setdefault(p.name, set()).add(p.pid)
        for name, pct in per_name.items():
            best[name] = max(best.get(name, 0.0), pct)
    ranked = sorted(best.items(), key=lambda kv: -kv[1])
    return [{"name": k, "cpu_pct": v, "pids": sorted(pids.get(k, ()))}
            for k, v in ranked[:n] if v >= MIN_COMPETITOR_PCT]


def make_diagnoser(
    slow_margin: float, sampler: Any = None, on_slow: Callable[[str], None] | None = None
) -> Callable[..., dict[str, Any]]:
    """The function the worker calls after each job (see queue/runner.py)."""

    def diagnose(
        *, job_id: str, key: ShapeKey, expectation: Expectation | None, timings: Timings,
        window: Any, engine: Any, recompiles: int = 0,
    ) -> dict[str, Any]:
        context: list[Any] = []
        if sampler is not None and window is not None:
            context = sampler.samples_between(window.t_start - 2.0, window.t_end)
        gpu_index = int(engine.device.split(":")[1]) if ":" in engine.device else 0
        diagnosis = attribute(
            timings, expectation, window, slow_margin=slow_margin, gpu_index=gpu_index,
            recompiles=recompiles, context=context,
            empty_cache_per_request=engine.options.empty_cache_per_request,
        )
        if diagnosis.slow and on_slow is not None:
            on_slow(diagnosis.log_line(job_id))
        return diagnosis.to_dict()

    return diagnose
