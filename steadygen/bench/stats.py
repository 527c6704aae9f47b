"""Statistics for benchmark runs: robust summaries and bootstrap confidence intervals."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (n - 1)
    cv: float  # std / mean
    p50: float
    p90: float
    p99: float
    min: float
    max: float

    @property
    def p99_over_p50(self) -> float:
        return self.p99 / self.p50 if self.p50 else math.nan

    def to_dict(self) -> dict[str, float]:
        out = asdict(self)
        out["p99_over_p50"] = self.p99_over_p50
        return out


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in 0..100."""
    return float(np.percentile(np.asarray(values, dtype=float), q))


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        nan = math.nan
        return Summary(0, nan, nan, nan, nan, nan, nan, nan, nan)
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return Summary(
        n=len(values),
        mean=mean,
        std=std,
        cv=std / mean if mean else math.nan,
        p50=percentile(values, 50),
        p90=percentile(values, 90),
        p99=percentile(values, 99),
        min=min(values),
        max=max(values),
    )


# Each takes an array and the axis of the values, so that scipy's bootstrap can compute all
# resamples in one call (vectorized); the result is an array over the other axes.
STATISTICS: dict[str, Callable[..., Any]] = {
    "mean": lambda x, axis=-1: np.mean(x, axis=axis),
    "p50": lambda x, axis=-1: np.percentile(x, 50, axis=axis),
    "p99": lambda x, axis=-1: np.percentile(x, 99, axis=axis),
    "cv": lambda x, axis=-1: np.std(x, ddof=1, axis=axis) / np.mean(x, axis=axis),
    "p99_over_p50": lambda x, axis=-1: (np.percentile(x, 99, axis=axis)
                                        / np.percentile(x, 50, axis=axis)),
}


def _value(statistic: str, x: np.ndarray) -> float:
    if not len(x) or (statistic == "cv" and len(x) < 2):
        return math.nan
    return float(STATISTICS[statistic](x))


@dataclass(frozen=True)
class Difference:
    """statistic(a) - statistic(b), with a bootstrap 95 % confidence interval."""

    statistic: str
    a: str
    b: str
    value: float
    low: float
    high: float

    @property
    def significant(self) -> bool:
        return not (self.low <= 0.0 <= self.high)

    def to_dict(self) -> dict[str, float | str | bool]:
        out: dict[str, float | str | bool] = dict(asdict(self))
        out["significant"] = self.significant
        return out


Values = Sequence[float] | np.ndarray


def bootstrap_difference(
    a: Values,
    b: Values,
    statistic: str = "mean",
    *,
    names: tuple[str, str] = ("A", "B"),
    resamples: int = 2000,
    seed: int = 0,
) -> Difference:
    """Percentile bootstrap (scipy) of stat(a) - stat(b), independent samples, 95 %."""
    fn = STATISTICS[statistic]
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    value = _value(statistic, xa) - _value(statistic, xb)
    if len(xa) < 2 or len(xb) < 2:
        return Difference(statistic, names[0], names[1], value, math.nan, math.nan)
    res = sps.bootstrap(
        (xa, xb),
        lambda x, y, axis=-1: fn(x, axis=axis) - fn(y, axis=axis),
        vectorized=True,
        paired=False,
        n_resamples=resamples,
        confidence_level=0.95,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    ci = res.confidence_interval
    return Difference(statistic, names[0], names[1], value, float(ci.low), float(ci.high))


@dataclass(frozen=True)
class Estimate:
    """statistic(values) with a percentile-bootstrap 95 % confidence interval."""

    statistic: str
    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float | str]:
        return dict(asdict(self))


def bootstrap_ci(
    values: Values, statistic: str = "mean", *, resamples: int = 2000, seed: int = 0
) -> Estimate:
    """One configuration's statistic with its 95 % interval (scipy, percentile method).
    Tail statistics (p99) from a few dozen runs have wide, lopsided intervals: read them so."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return Estimate(statistic, _value(statistic, x), math.nan, math.nan)
    res = sps.bootstrap(
        (x,),
        STATISTICS[statistic],
        vectorized=True,
        n_resamples=resamples,
        confidence_level=0.95,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    ci = res.confidence_interval
    return Estimate(statistic, _value(statistic, x), float(ci.low), float(ci.high))


def value_range(values: Sequence[float | None]) -> dict[str, float] | None:
    """min, max and spread (max - min) of the readings that exist."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    return {"min": min(vals), "max": max(vals), "spread": max(vals) - min(vals)}
