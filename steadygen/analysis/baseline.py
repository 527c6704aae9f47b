"""Baselines: what a warm job of a given shape is expected to take, per phase and per step.

A baseline is the median over a sliding window of recent warm runs of the same shape key
(model, size, steps, guidance on/off, n, device, optimisation settings), so one slow run
moves it little. It is rebuilt from the job history at start, which is how it persists.

A baseline describes the machine in its usual state, so a run that its own signals show as
CPU-contended (our threads waited for a CPU far longer per CPU second than the baseline's
runs did; see ``cpu_wait_threshold``) does not teach it: otherwise a hog running half the
time would drag the expectation up and hide itself. When contention lasts (``NEW_NORMAL``,
half a window of such runs in a row), it is the machine's new normal and the baseline
restarts from them.
"""

from __future__ import annotations

import statistics
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

WINDOW = 50
MIN_RUNS = 1

# CPU contention, in run-queue delay per CPU second of our process ("wait per CPU"): a run
# is contended past median + max(K_SPREAD robust sigmas, REL_WAIT x median, MIN_WAIT) of the
# baseline's runs, i.e. past 2.5x its usual wait and by 0.25 s per CPU second at least.
# Measured on a shared 2-core machine (issue 6, 150+ tiny-model jobs): other people's load
# moved clean runs up to 2x their baseline's median wait, and by up to ~0.3 s/s when the
# machine was calmer (median 0.1-0.7); 2 to 6 CPU burners in our process group gave 2.5x
# to 12x the median.
K_SPREAD = 4.0
REL_WAIT = 1.5
MIN_WAIT = 0.25
FILTER_MIN_RUNS = 5  # the filter needs this many runs to know what usual looks like
NEW_NORMAL = WINDOW // 2  # contended runs in a row that restart the baseline from them
WAIT_PER_CPU = "run_delay_per_cpu_second"  # a ratio: seconds waited per second run
MAD_TO_SIGMA = 1.4826


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
    spread: dict[str, float] = field(default_factory=dict)  # robust sigma (1.4826 MAD)

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
            "spread": self.spread,
        }


def wait_per_cpu(delay: float | None, cpu: float | None) -> float | None:
    """Our threads' run-queue delay per CPU second of our process, if both are known."""
    if delay is None or cpu is None or cpu <= 0:
        return None
    return delay / cpu


def cpu_wait_threshold(exp: Expectation) -> float | None:
    """The wait per CPU second past which a run of this shape is CPU-contended."""
    usual = exp.signals.get(WAIT_PER_CPU)
    if usual is None:
        return None
    return wait_threshold(usual, exp.spread.get(WAIT_PER_CPU, 0.0))


def wait_threshold(usual: float, sigma: float) -> float:
    return usual + max(K_SPREAD * sigma, REL_WAIT * usual, MIN_WAIT)


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
        self._contended: dict[ShapeKey, list[WarmRun]] = {}  # in a row, held back
        self._lock = threading.Lock()
        self.held_back = 0  # contended runs kept out of the baselines so far

    def add(
        self, key: ShapeKey, timings: dict[str, Any], signals: dict[str, float] | None = None
    ) -> bool:
        """Record one finished job's timings (and its telemetry signals: run-queue delay,
        CPU seconds, SM clock); only warm runs that were not CPU-contended count. Returns
        whether it did."""
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
            runs = self._runs.setdefault(key, deque(maxlen=self.window))
            if self._is_contended(run, runs):
                held = self._contended.setdefault(key, [])
                held.append(run)
                self.held_back += 1
                if len(held) < NEW_NORMAL:
                    return False
                runs.clear()  # contention has lasted: it is the new normal
                runs.extend(held)
                held.clear()
                return True
            self._contended.pop(key, None)
            runs.append(run)
        return True

    @staticmethod
    def _is_contended(run: WarmRun, runs: deque[WarmRun]) -> bool:
        wait = _wait(run)
        usual = [w for r in runs if (w := _wait(r)) is not None]
        if wait is None or len(usual) < FILTER_MIN_RUNS:
            return False
        return wait > wait_threshold(statistics.median(usual), robust_sigma(usual))

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
            spread=_scaled_signals(base.spread, scale),
        )

    def keys(self) -> list[ShapeKey]:
        with self._lock:
            return list(self._runs)


def _expectation(key: ShapeKey, runs: list[WarmRun]) -> Expectation:
    steps = [s for r in runs for s in r.steps_s]
    phases = {p: statistics.median(r.phases[p] for r in runs) for p in runs[0].phases}
    values: dict[str, list[float]] = {}
    for r in runs:
        for n, v in r.signals.items():
            values.setdefault(n, []).append(v)
        wait = _wait(r)
        if wait is not None:
            values.setdefault(WAIT_PER_CPU, []).append(wait)
    signals = {n: statistics.median(v) for n, v in sorted(values.items())}
    spread = {n: robust_sigma(v) for n, v in sorted(values.items())}
    return Expectation(
        key=key,
        runs=len(runs),
        total_s=statistics.median(r.total_s for r in runs),
        step_s=statistics.median(steps) if steps else 0.0,
        phases=phases,
        signals=signals,
        spread=spread,
    )


def _wait(run: WarmRun) -> float | None:
    return wait_per_cpu(run.signals.get("run_delay_s"), run.signals.get("cpu_s"))


def robust_sigma(values: list[float]) -> float:
    """1.4826 x the median absolute deviation: the standard deviation for normal data,
    moved little by outliers; 0 for fewer than two values."""
    if len(values) < 2:
        return 0.0
    mid = statistics.median(values)
    return MAD_TO_SIGMA * statistics.median(abs(v - mid) for v in values)


def _scaled_signals(signals: dict[str, float], scale: float) -> dict[str, float]:
    """Amounts (seconds) scale with the work; rates (clock, wait per CPU second) do not."""
    return {
        n: v * scale if n.endswith("_s") else v for n, v in signals.items()
    }
