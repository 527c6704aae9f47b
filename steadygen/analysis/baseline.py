"""Baselines: what a warm job of a given shape is expected to take, per phase and per step.

A baseline is the median over a sliding window of recent warm runs of the same shape key
(model, size, steps, guidance on/off, n, device, optimisation settings), so one slow run
moves it little. It is rebuilt from the job history at start, which is how it persists.
"""

from __future__ import annotations

import statistics
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

WINDOW = 50
MIN_RUNS = 1


@dataclass(frozen=True)
class ShapeKey:
    model: str
    width: int
    height: int
    steps: int
    cfg: bool
    n: int
    device: str
    options: str = ""  # a short tag of the engine's optimisation settings

    def label(self) -> str:
        return (
            f"{self.model} {self.width}x{self.height} {self.steps} steps"
            f"{' cfg' if self.cfg else ''} n={self.n} {self.device}"
            + (f" [{self.options}]" if self.options else "")
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @property
    def work(self) -> float:
        """A rough size of the work, to scale one shape's times to another's."""
        return self.width * self.height * self.steps * self.n * (2 if self.cfg else 1)


@dataclass(frozen=True)
class Expectation:
    """Robust expectations for one shape key, in seconds."""

    key: ShapeKey
    runs: int
    total_s: float  # service time: the engine's total, queue wait excluded
    step_s: float  # median step
    phases: dict[str, float]  # median per phase
    exact: bool = True  # False when scaled from another shape
    signals: dict[str, float] = field(default_factory=dict)  # median run delay, clock, ...

    @property
    def tail_s(self) -> float:
        """What follows the last step: decode, save, the rest."""
        return sum(self.phases.get(p, 0.0) for p in ("decode", "save", "memory", "other"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key.to_dict(),
            "runs": self.runs,
            "total_s": self.total_s,
            "step_s": self.step_s,
            "phases": self.phases,
            "exact": self.exact,
            "signals": self.signals,
        }


@dataclass(frozen=True)
class WarmRun:
    total_s: float
    steps_s: tuple[float, ...]
    phases: dict[str, float]
    signals: dict[str, float]


class Baselines:
    def __init__(self, window: int = WINDOW):
        self.window = window
        self._runs: dict[ShapeKey, deque[WarmRun]] = {}
        self._lock = threading.Lock()

    def add(
        self, key: ShapeKey, timings: dict[str, Any], signals: dict[str, float] | None = None
    ) -> bool:
        """Record one finished job's timings (and its telemetry signals: run-queue delay,
        CPU seconds, SM clock); only warm runs count. Returns whether it did."""
        if timings.get("first_of_shape") or timings.get("load_s", 0) > 0:
            return False
        if timings.get("warmup_s", 0) > 0 or not timings.get("steps_s"):
            return False
        phases = {
            "encode": float(timings.get("encode_s", 0.0)),
            "prepare": float(timings.get("prepare_s", 0.0)),
            "steps": float(sum(timings["steps_s"])),
            "decode": float(timings.get("decode_s", 0.0)),
            "save": float(timings.get("save_s", 0.0)),
            "memory": float(timings.get("memory_s", 0.0)),
            "other": float(timings.get("other_s", 0.0)),
        }
        run = WarmRun(
            float(timings["total_s"]), tuple(map(float, timings["steps_s"])), phases,
            dict(signals or {}),
        )
        with self._lock:
            self._runs.setdefault(key, deque(maxlen=self.window)).append(run)
        return True

    def expected(self, key: ShapeKey, exclude_last: bool = False) -> Expectation | None:
        """The expectation for ``key``; scaled from the nearest known shape if it has none."""
        with self._lock:
            runs = list(self._runs.get(key, ()))
            if exclude_last and runs:
                runs = runs[:-1]
            if len(runs) >= MIN_RUNS:
                return _expectation(key, runs)
            others = [
                (k, list(v)) for k, v in self._runs.items()
                if k.model == key.model and k.device == key.device and v
            ]
        if not others:
            return None
        near_key, near_runs = min(others, key=lambda kv: abs(kv[0].work - key.work))
        base = _expectation(near_key, near_runs)
        scale = key.work / near_key.work if near_key.work else 1.0
        step_scale = scale * near_key.steps / key.steps if key.steps else scale
        return Expectation(
            key=key,
            runs=0,
            total_s=base.total_s * scale,
            step_s=base.step_s * step_scale,
            phases={p: s * scale for p, s in base.phases.items()},
            exact=False,
            signals=_scaled_signals(base.signals, scale),
        )

    def keys(self) -> list[ShapeKey]:
        with self._lock:
            return list(self._runs)


def _expectation(key: ShapeKey, runs: list[WarmRun]) -> Expectation:
    steps = [s for r in runs for s in r.steps_s]
    phases = {p: statistics.median(r.phases[p] for r in runs) for p in runs[0].phases}
    names = {n for r in runs for n in r.signals}
    signals = {
        n: statistics.median(r.signals[n] for r in runs if n in r.signals) for n in sorted(names)
    }
    return Expectation(
        key=key,
        runs=len(runs),
        total_s=statistics.median(r.total_s for r in runs),
        step_s=statistics.median(steps) if steps else 0.0,
        phases=phases,
        signals=signals,
    )


def _scaled_signals(signals: dict[str, float], scale: float) -> dict[str, float]:
    """Amounts (seconds) scale with the work; rates (clock) do not."""
    return {n: v * scale if n.endswith("_s") else v for n, v in signals.items()}
