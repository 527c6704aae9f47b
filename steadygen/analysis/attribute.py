"""Why was this generation slow? Split a job's excess time into causes, each in seconds with
its evidence, and keep an honest unexplained remainder.

excess = (queue wait + service) - expected service, where the expectation is the shape's
baseline (a robust median of warm runs) without the phases that are booked as causes when
measured (memory management, offloading, adapter switches: ``BASELINE_PHASES``). Then:

1. measured phases (``MEASURED_PHASES``: queue wait, load and warm-up or compile, adapter
   switches, offloading, cache emptying) are booked at their measured seconds; the first run
   of a shape adds only what it visibly paid once: its first step's excess over its own
   later steps (allocations, kernel and plan selection). The rest of a first run's excess is
   left to the other causes, so contention or throttling on a first run is still seen;
2. the rest of the service excess is sized from the job's own signals against the baseline's
   (``gpu.py``: SM clocks per step, foreign processes by their sampled GPU share; ``cpu.py``:
   run-queue delay past this machine's calibration), each within what is left;
3. unexplained = excess - the causes, never forced to zero (negative: faster than expected).
   A cause must be past the noise floor (5 % of the expected time and 2 ms) to be named; a
   signal seen in a job that was not slower than expected is kept as a note, not a cause.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

from steadygen.analysis.baseline import Expectation, ShapeKey
from steadygen.analysis.causes import (
    ADAPTER,
    BASELINE_PHASES,
    CAUSE_KINDS,
    CAUSES,
    CLOCKS,
    COLD,
    CPU,
    FOREIGN,
    MEASURED_PHASES,
    MEMORY,
    OFFLOAD,
    QUEUE,
    Cause,
    Diagnosis,
    phase_seconds,
)
from steadygen.analysis.cpu import cpu_cause
from steadygen.analysis.gpu import clock_cause, foreign_cause

__all__ = [
    "ADAPTER", "CAUSES", "CAUSE_KINDS", "CLOCKS", "COLD", "CPU", "FOREIGN", "MEMORY",
    "OFFLOAD", "QUEUE", "Cause", "Diagnosis", "attribute", "make_diagnoser", "signals_of",
]

# A cause is named only past this share of the expected service time (and 2 ms), so that
# scheduling noise on a clean run does not read as a cause.
MIN_SHARE = 0.05
MIN_SECONDS = 0.002


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
    timings: Any,
    expectation: Expectation | None,
    window: Any = None,
    *,
    slow_margin: float = 0.25,
    gpu_index: int = 0,
    recompiles: int = 0,
    context: Sequence[Any] = (),
    empty_cache_per_request: bool = False,
) -> Diagnosis:
    """Diagnose one finished job. ``timings`` is the engine's Timings (any object with its
    fields); ``window`` its TelemetryWindow (or None when the sampler is off); ``context`` a
    few samples around it (for host process names)."""
    service = timings.total_s
    actual = timings.queue_wait_s + service
    notes: list[str] = []
    causes = _measured(timings, recompiles, empty_cache_per_request)
    measured_in_service = sum(
        phase_seconds(timings, ph.field) for ph in MEASURED_PHASES if ph.in_service)

    if expectation is None:
        notes.append("no baseline for this shape yet: expectations start after warm runs")
        # Nothing to compare with: measured phases only, and a first run said as such.
        named = [c for c in causes if c.seconds >= MIN_SECONDS or c.kind == COLD]
        notes += [f"{c.kind} measured below the noise floor ({c.seconds:.3f} s): {c.evidence}"
                  for c in causes if c not in named]
        return Diagnosis(actual, None, None, False, named, None, notes=notes)

    booked_phases = sum(expectation.phases.get(p, 0.0) for p in BASELINE_PHASES)
    expected = max(1e-9, expectation.total_s - booked_phases)
    excess = actual - expected

    # 2. Sized from the job's own signals, within what is left of the service excess.
    left = service - expected - measured_in_service - _one_off(timings)
    if window is not None:
        notes += _sized(timings, expectation, window, max(left, 0.0), gpu_index, context,
                        causes)
    named, quiet = _split(causes, expected)
    notes += quiet
    unexplained = excess - sum(c.seconds for c in named)
    if not expectation.exact:
        notes.append(f"expectation scaled from another shape ({expectation.key.label()})")
    return Diagnosis(
        actual_s=actual,
        expected_s=expected,
        excess_s=excess,
        slow=actual > expected * (1 + slow_margin),
        causes=sorted(named, key=lambda c: -c.seconds),
        unexplained_s=unexplained,
        baseline_runs=expectation.runs,
        baseline_exact=expectation.exact,
        notes=notes,
    )


def _sized(t: Any, exp: Expectation, window: Any, left: float, gpu: int,
           ctx: Sequence[Any], causes: list[Cause]) -> list[str]:
    """Clocks, then CPU contention, then foreign processes, each within what is left."""
    notes: list[str] = []

    def book(cause: Cause | None) -> float:
        if cause is None:
            return 0.0
        if cause.seconds > 0:
            causes.append(cause)
            return cause.seconds
        notes.append(f"{cause.kind} seen without cost: {cause.evidence}")
        return 0.0

    left -= book(clock_cause(t, exp, window, left, gpu))
    left -= book(cpu_cause(exp, window, left, ctx))
    foreign, idle = foreign_cause(t, exp, window, left, gpu)
    book(foreign)
    return notes + idle


def _measured(t: Any, recompiles: int, empty_cache: bool) -> list[Cause]:
    """One cause per kind in MEASURED_PHASES with its measured seconds, and the first run's
    visible one-off set-up added to cold start."""
    seconds: dict[str, float] = {}
    parts: dict[str, list[str]] = {}
    for ph in MEASURED_PHASES:
        value = phase_seconds(t, ph.field)
        if value > 0:
            seconds[ph.kind] = seconds.get(ph.kind, 0.0) + value
            parts.setdefault(ph.kind, []).append(f"{ph.words} {value:.3f} s")
    one_off = _one_off(t)
    first = bool(getattr(t, "first_of_shape", False))
    if first:
        seconds[COLD] = seconds.get(COLD, 0.0) + one_off
        parts.setdefault(COLD, []).append(
            f"first run of this shape in this process: its first step took {one_off:.3f} s "
            "more than its later steps")
    if recompiles and COLD in parts:
        parts[COLD].append(f"{recompiles} recompile(s)")
    out = []
    for kind, value in seconds.items():
        details: dict[str, Any] = {ph.field: phase_seconds(t, ph.field)
                                   for ph in MEASURED_PHASES if ph.kind == kind}
        if kind == COLD:
            details.update(first_of_shape=first, first_step_one_off_s=one_off,
                           recompiles=recompiles)
        if kind == MEMORY:
            details["empty_cache_per_request"] = empty_cache
        evidence = "; ".join(parts[kind])
        if kind == MEMORY and empty_cache:
            evidence = "per-request cache emptying: " + evidence
        out.append(Cause(kind, value, evidence, details))
    if first and COLD not in seconds:
        out.append(Cause(COLD, 0.0, "; ".join(parts[COLD]), {
            "first_of_shape": True, "first_step_one_off_s": 0.0, "recompiles": recompiles}))
    return out


def _one_off(t: Any) -> float:
    """What a shape's first run visibly paid once: its first step's excess over the median
    of its later steps (0 for a warm run, or with fewer than three steps)."""
    steps = list(getattr(t, "steps_s", []) or [])
    if not getattr(t, "first_of_shape", False) or len(steps) < 3:
        return 0.0
    return max(0.0, steps[0] - statistics.median(steps[1:]))


def _split(causes: list[Cause], expected_s: float) -> tuple[list[Cause], list[str]]:
    """The causes worth naming (past the noise floor), and a note for each one measured
    below it, so a cheap cold start or cache emptying is said without being blamed.

    An adapter switch is an event of this job alone (a new LoRA set), timed in full: it is
    named past ``MIN_SECONDS`` whatever the job's length, so "the first image with a new LoRA
    was slower" is always explained. A queue wait below the floor is not worth a note."""
    floor = max(MIN_SECONDS, MIN_SHARE * expected_s)

    def worth(c: Cause) -> bool:
        return c.seconds >= (MIN_SECONDS if c.kind == ADAPTER else floor)

    named = [c for c in causes if worth(c)]
    quiet = [f"{c.kind} measured below the noise floor ({c.seconds:.3f} s < {floor:.3f} s): "
             f"{c.evidence}" for c in causes if not worth(c) and c.kind != QUEUE]
    return named, quiet


def make_diagnoser(
    slow_margin: float, sampler: Any = None, on_slow: Callable[[str], None] | None = None
) -> Callable[..., dict[str, Any]]:
    """The function the worker calls after each job (see queue/runner.py)."""

    def diagnose(
        *, job_id: str, key: ShapeKey, expectation: Expectation | None, timings: Any,
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
