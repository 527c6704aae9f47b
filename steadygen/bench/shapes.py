"""Attribution accuracy at several machine shapes, on whatever machine this runs on.

A shape pins our server to some CPUs (or not) and says where CPU burners run and whether
they compete for our CPUs' run queues (the truth a diagnosis is scored against):

- ``pinned-same-cpu``: our process on one CPU, two burners on that CPU: contention;
- ``pinned-other-cpu``: our process on one CPU, two burners on another: no run-queue
  contention, whatever slowdown shared caches or memory bandwidth cause;
- ``all-cpus-scaled``: our process anywhere, one burner per CPU it may use: contention;
- ``outside-session``: our process on one CPU, three burners there started outside our
  process tree and session (each in its own session and scheduling group, as another
  user's programs are): contention.

For each shape a fresh in-process server (the full stack on the tiny model) runs warm jobs
(the baseline, and its CPU calibration), then blocks of clean and interfered jobs
alternate, so drift in the machine's other load hits both alike. An interfered block whose
burners did not beat all through it is left out of the score and counted as invalid.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from steadygen.bench.interfere import InterferenceSpec, Interferer, usable_cpus

CPU_CAUSE = "cpu_contention"
PROMPT = "a lighthouse at dusk"


@dataclass(frozen=True)
class MachineShape:
    name: str
    server_cpus: tuple[int, ...] | None  # pin our process to these; None: as it is
    burners: InterferenceSpec
    contended: bool  # whether the burners compete for our CPUs' run queues


def shapes_for_this_machine(seconds: float = 600.0) -> list[MachineShape]:
    cpus = usable_cpus()
    first, last = cpus[0], cpus[-1]
    shapes = []
    if len(cpus) >= 2:
        shapes += [
            MachineShape("pinned-same-cpu", (first,),
                         InterferenceSpec("cpu", procs=2, cpus=(first,), seconds=seconds), True),
            MachineShape("pinned-other-cpu", (first,),
                         InterferenceSpec("cpu", procs=2, cpus=(last,), seconds=seconds), False),
        ]
    shapes += [
        MachineShape("all-cpus-scaled", None,
                     InterferenceSpec("cpu", procs=2 * len(cpus), seconds=seconds), True),
        MachineShape("outside-session", (first,),
                     InterferenceSpec("cpu", procs=3, cpus=(first,), seconds=seconds,
                                      detached=True), True),
    ]
    return shapes


@dataclass
class JobOutcome:
    interfered: bool
    valid: bool  # False: its block's burners did not prove they ran
    named: bool  # cpu_contention in the diagnosis
    seconds: float  # what it booked to cpu_contention
    excess_s: float | None
    total_s: float
    burner_named: bool  # a burner's pid among the competitors
    evidence: str  # the cpu_contention cause's evidence ("" when not named)
    wait_per_cpu: float | None  # from the job's own counters, named or not
    limit: float | None
    causes: dict[str, float] = field(default_factory=dict)


@dataclass
class ShapeResult:
    shape: str
    contended: bool
    server_cpus: list[int] | None
    burners: dict[str, Any]
    jobs: list[JobOutcome]
    invalid_blocks: list[str]

    def score(self) -> dict[str, Any]:
        valid = [j for j in self.jobs if j.valid]
        truth = [j.interfered and self.contended for j in valid]
        named = [j.named for j in valid]
        tp = sum(t and n for t, n in zip(truth, named, strict=True))
        fp = sum(n and not t for t, n in zip(truth, named, strict=True))
        fn = sum(t and not n for t, n in zip(truth, named, strict=True))
        negatives = sum(not t for t in truth)
        tps = [j for j in valid if j.named and j.interfered and self.contended]
        return {
            "jobs": len(valid), "tp": tp, "fp": fp, "fn": fn, "negatives": negatives,
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None,
            "false_positive_rate": fp / negatives if negatives else None,
            "burner_named_share": (sum(j.burner_named for j in tps) / len(tps)) if tps else None,
            "invalid_jobs": len(self.jobs) - len(valid),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"shape": self.shape, "contended": self.contended,
                "server_cpus": self.server_cpus, "burners": self.burners,
                "score": self.score(), "invalid_blocks": self.invalid_blocks,
                "jobs": [asdict(j) for j in self.jobs]}


@contextmanager
def pinned(cpus: tuple[int, ...] | None) -> Iterator[None]:
    """Pin every thread of this process to ``cpus`` (threads started later inherit it from
    the thread that starts them); put them back afterwards."""
    if cpus is None or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    _set_all_threads(set(cpus))
    try:
        yield
    finally:
        _set_all_threads(before)


def _set_all_threads(cpus: set[int]) -> None:
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except (ProcessLookupError, PermissionError):
            continue  # a thread that ended meanwhile


def run_shape(
    shape: MachineShape, make_target: Callable[[Path], Any], data_dir: Path, *,
    warm_jobs: int = 8, blocks: int = 8, block: int = 3, size: int = 256, steps: int = 8,
    say: Callable[[str], None] = lambda _: None,
) -> ShapeResult:
    """Warm jobs, then ``blocks`` alternating blocks (clean first) of ``block`` jobs."""
    jobs: list[JobOutcome] = []
    invalid: list[str] = []
    with pinned(shape.server_cpus):
        target = make_target(data_dir / shape.name)
        try:
            for k in range(warm_jobs):
                _run(target, size, steps, seed=k)
            for b in range(blocks):
                interfered = b % 2 == 1
                say(f"{shape.name}: block {b + 1}/{blocks}"
                    + (" with burners" if interfered else ""))
                if not interfered:
                    jobs += [_outcome(_run(target, size, steps, 100 + 10 * b + k), False, True,
                                      []) for k in range(block)]
                    continue
                with Interferer(shape.burners) as burners:
                    t0 = time.monotonic()
                    records = [_run(target, size, steps, 100 + 10 * b + k) for k in range(block)]
                    check = burners.check(t0, time.monotonic())
                    if not check.valid:
                        invalid.append(f"block {b + 1}: {check.reason}")
                    jobs += [_outcome(r, True, check.valid, burners.pids) for r in records]
        finally:
            target.close()
    spec = asdict(shape.burners)
    return ShapeResult(shape.name, shape.contended,
                       list(shape.server_cpus) if shape.server_cpus else None, spec, jobs,
                       invalid)


def _run(target: Any, size: int, steps: int, seed: int) -> dict[str, Any]:
    job = target.run_one({"prompt": PROMPT, "width": size, "height": size, "steps": steps,
                          "seed": seed})
    if job["state"] != "succeeded" or job.get("diagnosis") is None:
        raise RuntimeError(f"a scenario job did not succeed with a diagnosis: {job}")
    return job


def _outcome(job: dict[str, Any], interfered: bool, valid: bool,
             burner_pids: list[int]) -> JobOutcome:
    d = job["diagnosis"]
    cpu = next((c for c in d["causes"] if c["kind"] == CPU_CAUSE), None)
    competitors = cpu["details"]["competitors"] if cpu else []
    named_pids = {pid for n in competitors for pid in n["pids"]}
    details = cpu["details"] if cpu else {}
    return JobOutcome(
        interfered=interfered, valid=valid, named=cpu is not None,
        seconds=cpu["seconds"] if cpu else 0.0, excess_s=d["excess_s"],
        total_s=job["timings"]["total_s"],
        burner_named=bool(named_pids & set(burner_pids)),
        evidence=cpu["evidence"] if cpu else "",
        wait_per_cpu=_wait(job), limit=details.get("wait_per_cpu_limit"),
        causes={c["kind"]: round(c["seconds"], 4) for c in d["causes"]},
    )


def _wait(job: dict[str, Any]) -> float | None:
    host = (job.get("telemetry") or {}).get("host") or {}
    delay, cpu = host.get("run_delay_s"), host.get("cpu_s")
    return delay / cpu if delay is not None and cpu else None
