"""Baselines: what a warm job of a given shape is expected to take, per phase and per step.

A baseline is the median over a sliding window of recent warm runs of the same shape key
(model, size, steps, guidance on/off, n, device, optimisation settings), so one slow run
moves it little. It is rebuilt from the job history at start, which is how it persists.

A baseline describes the machine in its usual state, so a run that its own signals show as
CPU-contended (our threads waited for a CPU past the calibrated limit; see
``CpuCalibration``) does not teach it: otherwise a hog running half the time would drag the
expectation up, and the calibration with it, and hide itself. When contention lasts (``NEW_NORMAL``,
half a window of such runs in a row), it is the machine's new normal and the baseline
restarts from them.
"""

from __future__ import annotations

import statistics
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from steadygen.analysis.causes import BASELINE_PHASES

WINDOW = 50
MIN_RUNS = 1

# CPU contention, in run-queue delay per CPU second of our process ("wait per CPU"), is
# calibrated on this machine's own clean runs (see ``CpuCalibration``): a run is contended
# past the median of the baseline's runs plus K_SPREAD robust sigmas of them, and never
# below the 90th percentile of its clean runs. K_SPREAD is a statistical choice (four
# sigmas: about 1 in 30,000 for normal noise), not a property of any one machine.
K_SPREAD = 4.0
CALIBRATION_MIN_RUNS = 5  # fewer clean runs: not calibrated, contention is not named
# The calibration rests on the most recent clean runs only, so it follows a shared machine's
# background load as it drifts (a window of 50 runs may span very different hours).
CALIBRATION_WINDOW = 20
CALIBRATED = ("run_delay_s",)  # signals whose medians come from the recent runs too
FILTER_MIN_RUNS = CALIBRATION_MIN_RUNS  # the filter needs a calibration too
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
    upper: dict[str, float] = field(default_factory=dict)  # 90th percentile of the runs
    calibration_runs: int = 0  # runs with a CPU wait measured (kept when scaled)

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
            "upper": self.upper,
            "calibration_runs": self.calibration_runs,
        }


@dataclass(frozen=True)
class CpuCalibration:
    """Where CPU waiting becomes contention on this machine, from its own clean runs.

    ``usual``: the median of the runs' values; ``sigma``: their robust spread (1.4826 MAD);
    ``upper``: their 90th percentile (a clean run this high is this machine's normal, and
    one contended run that slipped in before the calibration cannot set the bar);
    ``limit = max(usual + K_SPREAD x sigma, upper)``. The value is wait per CPU second
    (``signal == WAIT_PER_CPU``), or the run-queue delay itself in seconds when CPU time is
    unknown (``signal == "run_delay_s"``).
    """

    signal: str
    runs: int
    usual: float
    sigma: float
    upper: float

    @property
    def calibrated(self) -> bool:
        return self.runs >= CALIBRATION_MIN_RUNS

    @property
    def limit(self) -> float:
        return max(self.usual + K_SPREAD * self.sigma, self.upper)

    def describe(self) -> str:
        unit = " s per CPU second" if self.signal == WAIT_PER_CPU else " s"
        return (f"calibrated on {self.runs} clean runs of this machine: usual "
                f"{self.usual:.3f}{unit}, spread {self.sigma:.3f}, 90th percentile "
                f"{self.upper:.3f}; contended past {self.limit:.3f}{unit}")

    def to_dict(self) -> dict[str, Any]:
        return {"signal": self.signal, "runs": self.runs, "usual": self.usual,
                "sigma": self.sigma, "upper": self.upper, "limit": self.limit,
                "k_spread": K_SPREAD}


def calibrate(values: list[float], signal: str = WAIT_PER_CPU) -> CpuCalibration:
    if not values:
        return CpuCalibration(signal, 0, 0.0, 0.0, 0.0)
    return CpuCalibration(signal, len(values), statistics.median(values),
                          robust_sigma(values), upper_decile(values))


def cpu_calibration(exp: Expectation, signal: str = WAIT_PER_CPU) -> CpuCalibration | None:
    """The calibration an expectation carries for ``signal``; None when it has none."""
    usual = exp.signals.get(signal)
    if usual is None:
        return None
    runs = exp.calibration_runs or exp.runs
    return CpuCalibration(signal, runs, usual, exp.spread.get(signal, 0.0),
                          exp.upper.get(signal, usual))


def wait_per_cpu(delay: float | None, cpu: float | None) -> float | None:
    """Our threads' run-queue delay per CPU second of our process, if both are known."""
    if delay is None or cpu is None or cpu <= 0:
        return None
    return delay / cpu


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
            "other": float(timings.get("other_s", 0.0)),
        }
        for phase, name in BASELINE_PHASES.items():  # booked as causes: kept apart
            phases[phase] = float(timings.get(name) or 0.0)
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
        recent = list(runs)[-CALIBRATION_WINDOW:]
        cal = calibrate([w for r in recent if (w := _wait(r)) is not None])
        if wait is None or not cal.calibrated:
            return False
        return wait > cal.limit

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
            upper=_scaled_signals(base.upper, scale),
            calibration_runs=base.calibration_runs,
        )

    def keys(self) -> list[ShapeKey]:
        with self._lock:
            return list(self._runs)


def _expectation(key: ShapeKey, runs: list[WarmRun]) -> Expectation:
    steps = [s for r in runs for s in r.steps_s]
    phases = {p: statistics.median(r.phases[p] for r in runs) for p in runs[0].phases}
    values: dict[str, list[float]] = {}
    recent = runs[-CALIBRATION_WINDOW:]
    for r in runs:
        for n, v in r.signals.items():
            if n not in CALIBRATED or r in recent:
                values.setdefault(n, []).append(v)
    for r in recent:  # the calibration follows the machine as it is now
        wait = _wait(r)
        if wait is not None:
            values.setdefault(WAIT_PER_CPU, []).append(wait)
    signals = {n: statistics.median(v) for n, v in sorted(values.items())}
    spread = {n: robust_sigma(v) for n, v in sorted(values.items())}
    upper = {n: upper_decile(v) for n, v in sorted(values.items())}
    return Expectation(
        key=key,
        runs=len(runs),
        total_s=statistics.median(r.total_s for r in runs),
        step_s=statistics.median(steps) if steps else 0.0,
        phases=phases,
        signals=signals,
        spread=spread,
        upper=upper,
        calibration_runs=len(values.get(WAIT_PER_CPU, values.get("run_delay_s", []))),
    )


def _wait(run: WarmRun) -> float | None:
    return wait_per_cpu(run.signals.get("run_delay_s"), run.signals.get("cpu_s"))


def upper_decile(values: list[float]) -> float:
    """The 90th percentile by the lower nearest rank: the largest value once the top tenth
    (one run at least) is left out, so a single contended run cannot set it."""
    if not values:
        return 0.0
    ranked = sorted(values)
    return ranked[int(0.9 * (len(ranked) - 1))]


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
