"""Baselines: robust medians over a sliding window of warm runs, per shape key."""

from __future__ import annotations

from typing import Any

import pytest

from steadygen.analysis.baseline import (
    CALIBRATION_WINDOW,
    FILTER_MIN_RUNS,
    NEW_NORMAL,
    WAIT_PER_CPU,
    Baselines,
    Expectation,
    ShapeKey,
    calibrate,
    cpu_calibration,
    robust_sigma,
)

KEY = ShapeKey("zimage-tiny", 256, 256, 8, False, 1, "cpu")


def expect(b: Baselines, key: ShapeKey, exclude_last: bool = False) -> Expectation:
    found = b.expected(key, exclude_last=exclude_last)
    assert found is not None
    return found


def run(total: float = 1.0, step: float = 0.1, steps: int = 8, **extra: Any) -> dict[str, Any]:
    t = {"total_s": total, "steps_s": [step] * steps, "encode_s": 0.05, "decode_s": 0.1,
         "save_s": 0.02, "memory_s": 0.0, "other_s": 0.0, "prepare_s": 0.01,
         "first_of_shape": False, "load_s": 0.0, "warmup_s": 0.0}
    t.update(extra)
    return t


def test_the_median_resists_outliers() -> None:
    b = Baselines()
    for total in [1.0, 1.1, 0.9, 1.0, 9.0, 1.05, 0.95, 30.0, 1.0]:
        assert b.add(KEY, run(total=total, step=total / 10))
    exp = expect(b, KEY)
    assert exp.runs == 9 and exp.exact
    assert exp.total_s == pytest.approx(1.0)
    assert exp.step_s == pytest.approx(0.1)
    assert exp.phases["decode"] == pytest.approx(0.1)
    assert exp.phases["steps"] == pytest.approx(0.8)


def test_the_window_slides() -> None:
    b = Baselines(window=3)
    for total in [5.0, 5.0, 5.0, 1.0, 1.0]:
        b.add(KEY, run(total=total))
    exp = expect(b, KEY)
    assert exp.runs == 3 and exp.total_s == pytest.approx(1.0)
    assert expect(b, KEY, exclude_last=True).total_s == pytest.approx(3.0)  # [5, 1]


@pytest.mark.parametrize("cold", [{"first_of_shape": True}, {"load_s": 3.0},
                                  {"warmup_s": 1.0}, {"steps_s": []}])
def test_cold_and_load_runs_do_not_count(cold: dict[str, Any]) -> None:
    b = Baselines()
    assert not b.add(KEY, run(total=10.0, **cold))
    assert b.expected(KEY) is None
    b.add(KEY, run(total=1.0))
    assert expect(b, KEY).total_s == pytest.approx(1.0) and expect(b, KEY).runs == 1


def test_signals_are_medians_with_a_robust_spread() -> None:
    b = Baselines()
    for delay, cpu, clock in [(0.1, 1.0, 1.9e9), (0.2, 1.0, 2.0e9), (0.3, 1.0, 1.95e9),
                              (5.0, 1.0, 0.5e9), (0.2, 2.0, 1.98e9)]:
        b.add(KEY, run(), {"run_delay_s": delay, "cpu_s": cpu, "sm_clock_hz": clock})
    exp = expect(b, KEY)
    assert exp.signals["run_delay_s"] == pytest.approx(0.2)
    assert exp.signals["cpu_s"] == pytest.approx(1.0)
    assert exp.signals["sm_clock_hz"] == pytest.approx(1.95e9)
    # waits per CPU second: 0.1, 0.2, 0.3, 5.0, 0.1 -> median 0.2, MAD 0.1
    assert exp.signals[WAIT_PER_CPU] == pytest.approx(0.2)
    assert exp.spread[WAIT_PER_CPU] == pytest.approx(0.14826)
    cal = cpu_calibration(exp)
    assert cal is not None and cal.calibrated and cal.runs == 5
    # the one 5.0 run is left out of the 90th percentile: the spread sets the bar
    assert cal.upper == pytest.approx(0.3)
    assert cal.limit == pytest.approx(0.2 + 4 * 0.14826)
    assert exp.to_dict()["spread"] == exp.spread


def test_the_calibration_follows_each_machines_own_clean_runs() -> None:
    """The bar is set by the machine, not by constants: a quiet workstation's clean runs
    (a few ms per CPU second) and a shared VM's (a third of a second, spread wide) give
    bars an order of magnitude apart, each past its own clean runs."""
    quiet = [0.004, 0.005, 0.006, 0.005, 0.004, 0.005, 0.006, 0.005, 0.005, 0.004]
    shared = [0.2, 0.35, 0.5, 0.3, 0.6, 0.25, 0.4, 0.3, 0.45, 0.35]
    q, s = calibrate(quiet), calibrate(shared)
    assert q.limit < 0.02 < 0.5 < s.limit
    assert all(v <= q.limit for v in quiet) and all(v <= s.limit for v in shared)
    assert q.limit == pytest.approx(0.005 + 4 * 1.4826 * 0.0005)
    assert "calibrated on 10 clean runs" in s.describe() and "contended past" in s.describe()
    assert not calibrate(shared[:4]).calibrated  # too few runs to know what usual is


def test_robust_sigma() -> None:
    assert robust_sigma([]) == robust_sigma([3.0]) == 0.0
    assert robust_sigma([1.0, 2.0, 3.0, 4.0, 100.0]) == pytest.approx(1.4826)


def test_another_shape_is_scaled_from_the_nearest_known_one() -> None:
    b = Baselines()
    b.add(KEY, run(total=1.0, step=0.1), {"run_delay_s": 0.2, "cpu_s": 1.0,
                                          "sm_clock_hz": 2e9})
    big = expect(b, ShapeKey("zimage-tiny", 512, 512, 8, False, 1, "cpu"))
    assert not big.exact and big.runs == 0
    assert big.total_s == pytest.approx(4.0) and big.step_s == pytest.approx(0.4)
    assert big.phases["decode"] == pytest.approx(0.4)
    assert big.signals["run_delay_s"] == pytest.approx(0.8)  # amounts scale with the work
    assert big.signals["sm_clock_hz"] == pytest.approx(2e9)  # rates do not
    assert big.signals[WAIT_PER_CPU] == pytest.approx(0.2)
    longer = expect(b, ShapeKey("zimage-tiny", 256, 256, 16, False, 1, "cpu"))
    assert longer.total_s == pytest.approx(2.0) and longer.step_s == pytest.approx(0.1)
    cfg = expect(b, ShapeKey("zimage-tiny", 256, 256, 8, True, 1, "cpu"))
    assert cfg.step_s == pytest.approx(0.2)  # guidance doubles the work per step
    assert b.expected(ShapeKey("zimage-tiny", 256, 256, 8, False, 1, "cuda:0")) is None
    assert b.expected(ShapeKey("zimage-turbo", 256, 256, 8, False, 1, "cpu")) is None


def test_the_nearest_shape_by_work_is_used() -> None:
    b = Baselines()
    b.add(KEY, run(total=1.0))
    b.add(ShapeKey("zimage-tiny", 1024, 1024, 8, False, 1, "cpu"), run(total=20.0))
    near_big = expect(b, ShapeKey("zimage-tiny", 768, 768, 8, False, 1, "cpu"))
    assert near_big.total_s == pytest.approx(20.0 * 768**2 / 1024**2)


def contended(b: Baselines, n: int) -> list[bool]:
    return [b.add(KEY, run(total=3.0), {"run_delay_s": 4.0, "cpu_s": 1.0}) for _ in range(n)]


def test_cpu_contended_runs_do_not_teach_the_baseline() -> None:
    b = Baselines()
    for delay in [0.2, 0.25, 0.3, 0.2, 0.25]:
        assert b.add(KEY, run(total=1.0), {"run_delay_s": delay, "cpu_s": 1.0})
    assert contended(b, 3) == [False] * 3
    assert expect(b, KEY).total_s == pytest.approx(1.0) and b.held_back == 3
    assert b.add(KEY, run(total=1.1), {"run_delay_s": 0.5, "cpu_s": 1.0})  # 2x: usual
    assert expect(b, KEY).runs == 6


def test_lasting_contention_becomes_the_new_normal() -> None:
    b = Baselines()
    for _ in range(FILTER_MIN_RUNS):
        b.add(KEY, run(total=1.0), {"run_delay_s": 0.2, "cpu_s": 1.0})
    outcome = contended(b, NEW_NORMAL)
    assert outcome == [False] * (NEW_NORMAL - 1) + [True]
    exp = expect(b, KEY)
    assert exp.runs == NEW_NORMAL and exp.total_s == pytest.approx(3.0)


def test_the_filter_waits_for_enough_runs_to_know_what_is_usual() -> None:
    b = Baselines()
    for _ in range(FILTER_MIN_RUNS - 1):
        b.add(KEY, run(total=1.0), {"run_delay_s": 0.2, "cpu_s": 1.0})
    assert contended(b, 1) == [True]
    assert b.add(KEY, run(total=1.0))  # no signals (sampler off): always counted


def test_the_calibration_follows_the_recent_clean_runs() -> None:
    """The bar comes from the most recent clean runs: when the machine's background load
    falls, the bar falls with it (a window of 50 runs may span a busy and a quiet hour)."""
    b = Baselines()
    for _ in range(30):  # a busy hour: clean runs wait 1 s per CPU second
        b.add(KEY, run(), {"run_delay_s": 1.0, "cpu_s": 1.0})
    busy = cpu_calibration(expect(b, KEY))
    for _ in range(CALIBRATION_WINDOW):  # a quiet one
        b.add(KEY, run(), {"run_delay_s": 0.1, "cpu_s": 1.0})
    quiet = cpu_calibration(expect(b, KEY))
    assert busy is not None and quiet is not None
    assert busy.usual == pytest.approx(1.0) and quiet.usual == pytest.approx(0.1)
    assert quiet.runs == CALIBRATION_WINDOW and expect(b, KEY).runs == 50
