"""Benchmark statistics against values computed by hand on fixed data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from steadygen.bench.stats import (
    bootstrap_ci,
    bootstrap_difference,
    percentile,
    summarize,
    value_range,
)

DATA = [3.0, 10.0, 1.0, 4.0, 2.0]  # sorted: 1 2 3 4 10


def test_summary_by_hand() -> None:
    s = summarize(DATA)
    assert s.n == 5
    assert s.mean == pytest.approx(4.0)
    # deviations -3 -2 -1 0 6: squares sum to 50, over n - 1 = 4
    assert s.std == pytest.approx(math.sqrt(50 / 4))
    assert s.cv == pytest.approx(math.sqrt(12.5) / 4.0)
    assert s.p50 == pytest.approx(3.0)
    # numpy's linear interpolation: rank (n - 1) q, between the neighbouring values
    assert s.p90 == pytest.approx(4.0 + 0.6 * (10.0 - 4.0))  # rank 3.6
    assert s.p99 == pytest.approx(4.0 + 0.96 * (10.0 - 4.0))  # rank 3.96
    assert s.p99_over_p50 == pytest.approx(9.76 / 3.0)
    assert (s.min, s.max) == (1.0, 10.0)
    assert s.to_dict()["p99_over_p50"] == pytest.approx(9.76 / 3.0)


def test_percentiles_interpolate_between_ranks() -> None:
    assert percentile([1.0, 2.0], 50) == pytest.approx(1.5)
    assert percentile([5.0, 1.0, 3.0, 2.0], 25) == pytest.approx(1.75)  # rank 0.75
    assert percentile(DATA, 0) == 1.0 and percentile(DATA, 100) == 10.0


def test_degenerate_summaries() -> None:
    one = summarize([2.5])
    assert (one.n, one.mean, one.std, one.cv, one.p99) == (1, 2.5, 0.0, 0.0, 2.5)
    empty = summarize([])
    assert empty.n == 0 and math.isnan(empty.mean) and math.isnan(empty.p99_over_p50)


def test_value_range() -> None:
    assert value_range([None, 3.0, 1.0, None, 2.0]) == {"min": 1.0, "max": 3.0, "spread": 2.0}
    assert value_range([None]) is None


def samples() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(42)
    return rng.normal(10.0, 1.0, 200), rng.normal(8.0, 1.0, 200)


def test_bootstrap_ci_of_a_difference_contains_the_true_difference() -> None:
    a, b = samples()
    d = bootstrap_difference(a, b, "mean", names=("A", "B"))
    assert d.value == pytest.approx(a.mean() - b.mean())
    assert d.low < 2.0 < d.high  # the populations differ by 2
    assert d.high - d.low < 0.6  # and the interval is informative
    assert d.significant and d.to_dict()["significant"] is True
    assert (d.a, d.b, d.statistic) == ("A", "B", "mean")


def test_bootstrap_is_deterministic_with_a_seed() -> None:
    a, b = samples()
    first = bootstrap_difference(a, b, "p99", seed=7)
    assert bootstrap_difference(a, b, "p99", seed=7) == first
    assert bootstrap_difference(a, b, "p99", seed=8) != first
    assert bootstrap_ci(a, "cv", seed=7) == bootstrap_ci(a, "cv", seed=7)


def test_no_difference_is_not_significant() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(5.0, 1.0, 100), rng.normal(5.0, 1.0, 100)
    for stat in ("mean", "p50", "cv"):
        d = bootstrap_difference(a, b, stat)
        assert d.low <= 0.0 <= d.high and not d.significant, stat


def test_bootstrap_ci_of_one_configuration() -> None:
    a, _ = samples()
    mean = bootstrap_ci(a, "mean")
    assert mean.value == pytest.approx(a.mean())
    assert mean.low < 10.0 < mean.high
    cv = bootstrap_ci(a, "cv")
    assert cv.value == pytest.approx(np.std(a, ddof=1) / np.mean(a))
    assert cv.low < cv.value < cv.high and cv.high - cv.low < 0.03
    ratio = bootstrap_ci(a, "p99_over_p50")
    assert ratio.low <= ratio.value <= ratio.high
    assert math.isnan(bootstrap_ci([1.0], "mean").low)


def test_too_few_values_give_no_interval() -> None:
    d = bootstrap_difference([1.0], [2.0, 3.0])
    assert d.value == pytest.approx(-1.5) and math.isnan(d.low) and not math.isnan(d.value)
