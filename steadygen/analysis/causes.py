"""The causes a slowdown is split into, their names, and the phases measured directly.

Cause names are stable strings: they label ``steadygen_slowdown_seconds_total{cause=...}``
and appear in every job's diagnosis. ``CAUSE_KINDS`` lists all of them, so the server's
metrics can create every label value up front.

A measured phase is a field of the engine's ``Timings`` whose seconds are a cause in full
(``MEASURED_PHASES``: field -> cause kind). Fields are read with ``getattr(timings, name,
0.0)``, so a phase the engine does not time yet counts as zero rather than failing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

QUEUE = "queue_wait"
COLD = "cold_start"
CLOCKS = "gpu_clocks"
FOREIGN = "foreign_gpu_process"
CPU = "cpu_contention"
MEMORY = "memory_management"
OFFLOAD = "offload"  # weights moved between CPU and GPU memory (low-VRAM modes)
ADAPTER = "adapter_switch"  # LoRA adapters loaded or switched for this job
CAUSES = (QUEUE, COLD, CLOCKS, FOREIGN, CPU, MEMORY, OFFLOAD, ADAPTER)
CAUSE_KINDS = CAUSES  # the label values of steadygen_slowdown_seconds_total{cause}

CAUSE_MEANINGS: dict[str, str] = {
    QUEUE: "time waiting in the queue behind other jobs",
    COLD: "model load, warm-up and compilation paid inside the job, and the one-off set-up "
          "of a shape's first run (its first step's excess over its own later steps)",
    CLOCKS: "GPU SM clock below the baseline's (heat, power cap), sized on steps whose time "
            "followed the clock",
    FOREIGN: "another process computing on our GPU, sized by its share of the SM time",
    CPU: "our threads waiting for a CPU past this machine's calibrated usual wait",
    MEMORY: "timed cache emptying and allocator work after the images",
    OFFLOAD: "timed moves of weights between CPU and GPU memory",
    ADAPTER: "timed loading or switching of LoRA adapters",
}


@dataclass(frozen=True)
class MeasuredPhase:
    """A ``Timings`` field (seconds) booked in full as ``kind``."""

    field: str
    kind: str
    words: str  # how the evidence names it
    in_service: bool = True  # False: outside the engine's total (the queue wait)


# Every phase that is a cause by measurement, in the order they happen. Several fields may
# book to one kind (load and warm-up are both cold start).
MEASURED_PHASES: tuple[MeasuredPhase, ...] = (
    MeasuredPhase("queue_wait_s", QUEUE, "waited in the queue before starting", False),
    MeasuredPhase("load_s", COLD, "model load"),
    MeasuredPhase("warmup_s", COLD, "warm-up or compile"),
    MeasuredPhase("adapter_s", ADAPTER, "loading or switching LoRA adapters"),
    MeasuredPhase("offload_s", OFFLOAD, "moving weights between CPU and GPU"),
    MeasuredPhase("memory_s", MEMORY, "cache emptying and allocator work"),
)

# The baseline keeps these phases' medians, so the expectation can leave them out: a phase
# every run pays (offloading in a low-VRAM mode) is then booked to its cause in full,
# rather than hidden in the expectation.
BASELINE_PHASES: dict[str, str] = {
    "memory": "memory_s", "offload": "offload_s", "adapter": "adapter_s",
}


def phase_seconds(timings: Any, name: str) -> float:
    """A phase's seconds, 0.0 when ``timings`` has no such field (yet)."""
    value = getattr(timings, name, 0.0)
    return float(value) if isinstance(value, int | float) else 0.0


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
