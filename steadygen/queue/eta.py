"""When will a job end? One model of service time and one formula, for both queues.

Service time is what a worker really spends on a job, from its claim to its durable end
(engine, telemetry, attribution and the writes included), so that the ETAs of the jobs
behind it add up. Workers report it after every success (``observe_service``); the queue
keeps the last ``WINDOW`` per request shape and expects their median: robust to the odd
slow job, and without the bias of a fixed safety factor. A shape never seen is scaled from
the same size at another step count, else a rough guess.

The ETA of a waiting job is the expected work ahead of it (the remaining time of the jobs
running, plus every queued job before it) spread over the workers, plus its own expected
service. A running job's ETA is its own, from its steps so far (``StepProgress.remaining_s``).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from steadygen.request import GenerationRequest

WINDOW = 20
# A first guess for a shape never seen, tuned on the tiny model on a CPU (GPU shapes are
# learned after their first job): seconds per step per 256x256 image.
ROUGH_S_PER_STEP_PER_TILE = 0.05


def shape_label(req: GenerationRequest) -> str:
    """The key service times are kept under: size, steps, CFG on/off, images."""
    return f"{req.width}x{req.height}:{req.steps}:{int(req.uses_cfg)}:{req.n}"


def _family(label: str) -> tuple[str, int]:
    size, steps, cfg, n = label.split(":")
    return f"{size}:{cfg}:{n}", int(steps)


def rough_service_s(req: GenerationRequest) -> float:
    tiles = req.width * req.height / (256 * 256)
    return ROUGH_S_PER_STEP_PER_TILE * req.steps * req.n * tiles


class ServiceTimes:
    """Recent service seconds per shape label. The table is plain data, so the Redis
    queue can keep it in a hash (one JSON list per label) and the API processes read it."""

    def __init__(self, table: Mapping[str, Iterable[float]] | None = None,
                 cold: Iterable[str] = ()):
        self.table: dict[str, list[float]] = {k: list(v)[-WINDOW:] for k, v in
                                              (table or {}).items()}
        self._cold: set[str] = set(cold)  # labels known only from a first (cold) run

    def observe(self, req: GenerationRequest, service_s: float, cold: bool = False) -> None:
        """Add one job's service time. A cold run (the first of its shape in a process:
        compile, plan building) counts only until a warm one is known."""
        label = shape_label(req)
        values = self.table.setdefault(label, [])
        if cold and values:
            return
        if not cold and label in self._cold:
            values.clear()
            self._cold.discard(label)
        if cold:
            self._cold.add(label)
        values.append(round(float(service_s), 4))
        del values[:-WINDOW]

    def expected_s(self, req: GenerationRequest) -> float:
        """In order of trust: this shape's warm runs; warm runs of its size at other step
        counts, scaled by steps; its own cold run; a cold run of its size, scaled; a guess."""
        label = shape_label(req)
        family, steps = _family(label)
        for warm in (True, False):
            known = self.table.get(label)
            if known and (label in self._cold) != warm:
                return statistics.median(known)
            per_step = [statistics.median(v) / s for k, v in self.table.items()
                        if v and (k in self._cold) != warm
                        for fam, s in [_family(k)] if fam == family and s > 0]
            if per_step:
                return statistics.median(per_step) * steps
        return rough_service_s(req)


def queued_eta_s(own_s: float, ahead_s: float, running_left_s: float, workers: int) -> float:
    """A waiting job ends after the work ahead of it, shared by the workers, then its own."""
    return (ahead_s + running_left_s) / max(1, workers) + own_s
