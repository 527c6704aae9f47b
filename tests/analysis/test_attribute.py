"""attribute() on synthetic jobs: the excess is split into measured causes, the remainder is
reported as it is (never forced to zero), and causes need evidence past the noise."""

from __future__ import annotations

import pytest

from steadygen.analysis.attribute import (
    CPU,
    MEMORY,
    QUEUE,
    Cause,
    Diagnosis,
    attribute,
    make_diagnoser,
)
from steadygen.analysis.baseline import WAIT_PER_CPU
from tests.analysis.builders import KEY, cpu_signals, expectation, host_window, timings

EXPECTED = 1.0  # expectation(): 0.05 + 0.01 + 8 x 0.1 + 0.1 + 0.04


def kinds(d: Diagnosis) -> set[str]:
    return {c.kind for c in d.causes}


def must(d: Diagnosis, kind: str) -> Cause:
    found = d.cause(kind)
    assert found is not None, (kind, d)
    return found


def test_expectation_builder_matches_the_constant() -> None:
    assert expectation().total_s == pytest.approx(EXPECTED)
    assert timings([0.1] * 8).total_s == pytest.approx(EXPECTED)


def test_a_slower_job_without_any_signal_keeps_its_excess_unexplained() -> None:
    d = attribute(timings([0.15] * 8), expectation())
    assert d.excess_s == pytest.approx(0.4)
    assert d.causes == []
    assert d.unexplained_s == pytest.approx(0.4)  # not forced to zero
    assert d.slow and d.main_cause is None


def test_a_faster_job_has_a_negative_remainder() -> None:
    d = attribute(timings([0.07] * 8), expectation())
    assert d.excess_s == pytest.approx(-0.24)
    assert d.unexplained_s == pytest.approx(-0.24)
    assert not d.slow and d.causes == []


def test_a_telemetry_window_with_nothing_unusual_explains_nothing() -> None:
    t = timings([0.15] * 8)
    window = host_window(t, run_delay_s=0.02, cpu_s=1.4)
    d = attribute(t, expectation(signals=cpu_signals(0.02, 1.0)), window)
    assert d.causes == [] and d.unexplained_s == pytest.approx(0.4)


def test_queue_wait_is_measured_directly_and_counts_in_the_actual_time() -> None:
    d = attribute(timings([0.1] * 8, queue=0.5), expectation())
    assert d.actual_s == pytest.approx(1.5)
    assert d.cause(QUEUE) is not None and must(d, QUEUE).seconds == pytest.approx(0.5)
    assert d.unexplained_s == pytest.approx(0.0, abs=1e-9)
    assert d.main_cause == QUEUE and d.slow


@pytest.mark.parametrize(("steps", "margin", "slow"), [
    ([0.125] * 8, 0.25, False),  # 1.2 s against 1.0 s: within a 25 % margin
    ([0.1375] * 8, 0.25, True),  # 1.3 s
    ([0.125] * 8, 0.10, True),  # 1.2 s, but a 10 % margin
    ([0.1] * 8, 0.0, False),  # exactly as expected is never slow
])
def test_slow_is_past_the_configured_margin(steps: list[float], margin: float,
                                            slow: bool) -> None:
    assert attribute(timings(steps), expectation(), slow_margin=margin).slow is slow


def test_without_a_baseline_there_is_no_expectation_and_no_verdict() -> None:
    d = attribute(timings([0.1] * 8), None)
    assert (d.expected_s, d.excess_s, d.unexplained_s, d.slow) == (None, None, None, False)
    assert d.causes == [] and any("no baseline" in n for n in d.notes)
    cold = attribute(timings([0.1] * 8, first_of_shape=True, load=2.0), None)
    assert kinds(cold) == {"cold_start"}
    assert must(cold, "cold_start").seconds == pytest.approx(2.0)
    assert must(cold, "cold_start").details["first_of_shape"] is True


def test_the_first_run_of_a_shape_is_cold_even_when_it_costs_little() -> None:
    d = attribute(timings([0.1] * 8, first_of_shape=True), expectation(exact=False))
    c = must(d, "cold_start")
    assert c is not None and c.details["first_of_shape"] and c.seconds == pytest.approx(0.0)
    slow_first = attribute(timings([0.2] * 8, first_of_shape=True), expectation(exact=False))
    assert must(slow_first, "cold_start").seconds == pytest.approx(0.8)
    assert slow_first.unexplained_s == pytest.approx(0.0, abs=1e-9)
    assert any("scaled from another shape" in n for n in slow_first.notes)


def test_load_and_warm_up_paid_in_a_job_are_cold_start() -> None:
    d = attribute(timings([0.1] * 8, load=1.5, warmup=0.5), expectation())
    assert must(d, "cold_start").seconds == pytest.approx(2.0)
    assert "model load 1.50 s" in must(d, "cold_start").evidence


def test_per_request_cache_emptying_is_named_whatever_it_costs() -> None:
    # 10 ms: under the 5 % noise floor, but it is what the settings asked for
    asked = attribute(timings([0.1] * 8, memory=0.01), expectation(),
                      empty_cache_per_request=True)
    assert asked.cause(MEMORY) is not None
    assert must(asked, MEMORY).details["empty_cache_per_request"] is True
    incidental = attribute(timings([0.1] * 8, memory=0.01), expectation())
    assert incidental.cause(MEMORY) is None
    assert incidental.unexplained_s == pytest.approx(0.01)
    big = attribute(timings([0.1] * 8, memory=0.3), expectation())
    assert must(big, MEMORY).seconds == pytest.approx(0.3)


def test_the_expectation_leaves_out_the_memory_phase_of_its_runs() -> None:
    # The baseline's runs emptied the cache too: the expectation is without it, so the
    # emptying shows as excess and as its cause instead of hiding in the expectation.
    exp = expectation(memory=0.2)
    d = attribute(timings([0.1] * 8, memory=0.2), exp, empty_cache_per_request=True)
    assert d.expected_s == pytest.approx(EXPECTED)
    assert must(d, MEMORY).seconds == pytest.approx(0.2)
    assert d.unexplained_s == pytest.approx(0.0, abs=1e-9)


def test_cpu_contention_is_named_past_the_baselines_usual_wait() -> None:
    t = timings([0.2] * 8)  # 1.8 s against 1.0 s
    exp = expectation(signals=cpu_signals(run_delay_s=0.1, cpu_s=1.0),
                      spread={WAIT_PER_CPU: 0.02})
    window = host_window(t, run_delay_s=2.0, cpu_s=1.0,
                         competitors=((4321, "python3", 95.0), (4322, "python3", 90.0),
                                      (77, "sshd", 1.0)))
    d = attribute(t, exp, window)
    c = must(d, CPU)
    assert c.seconds == pytest.approx(0.8)  # 1.9 s of extra wait, capped at the excess
    assert d.unexplained_s == pytest.approx(0.0, abs=1e-9)
    assert c.details["wait_per_cpu"] == pytest.approx(2.0)
    assert c.details["wait_per_cpu_limit"] == pytest.approx(0.35)  # 0.1 + 0.25 s/s at least
    assert c.details["competitors"] == [{"name": "python3", "cpu_pct": 185.0,
                                         "pids": [4321, 4322]}]
    assert "python3 (pid 4321, 4322: 185%)" in c.evidence
    assert c.details["own_cpus_busy"] == pytest.approx(1.0 / 1.8)
    assert "our own process kept" not in c.evidence  # 0.6 of 2 CPUs: not ours


def test_contention_from_our_own_concurrent_jobs_is_said_so() -> None:
    t = timings([0.2] * 8)  # 1.8 s, in which our process ran 3.4 CPU seconds on 2 cores
    exp = expectation(signals=cpu_signals(run_delay_s=0.1, cpu_s=1.0))
    c = must(attribute(t, exp, host_window(t, run_delay_s=3.0, cpu_s=3.4)), CPU)
    assert c.details["own_cpus_busy"] == pytest.approx(3.4 / 1.8)
    assert "our own process kept 1.9 of 2 CPUs busy" in c.evidence


def test_cpu_contention_is_sized_by_the_extra_wait_when_less_than_the_excess() -> None:
    t = timings([0.2] * 8)
    exp = expectation(signals=cpu_signals(run_delay_s=0.1, cpu_s=1.0))
    d = attribute(t, exp, host_window(t, run_delay_s=0.5, cpu_s=1.0))
    assert must(d, CPU).seconds == pytest.approx(0.4)  # 0.5 - 0.1 x 1.0 CPU second
    assert d.unexplained_s == pytest.approx(0.4)


def test_usual_waiting_is_not_contention() -> None:
    # Waits 2x the baseline's median: a shared machine does that; 2.5x is the floor.
    t = timings([0.2] * 8)
    exp = expectation(signals=cpu_signals(run_delay_s=0.4, cpu_s=1.0))
    d = attribute(t, exp, host_window(t, run_delay_s=0.8, cpu_s=1.0))
    assert d.cause(CPU) is None and d.unexplained_s == pytest.approx(0.8)


def test_on_a_quiet_machine_a_little_waiting_is_not_contention() -> None:
    # The usual wait is 0.02 s per CPU second; 10x that is still scheduling noise, below
    # the floor of a quarter second per CPU second.
    t = timings([0.2] * 8)
    exp = expectation(signals=cpu_signals(run_delay_s=0.02, cpu_s=1.0))
    assert attribute(t, exp, host_window(t, run_delay_s=0.2, cpu_s=1.0)).cause(CPU) is None
    found = must(attribute(t, exp, host_window(t, run_delay_s=0.5, cpu_s=1.0)), CPU)
    assert found.seconds == pytest.approx(0.48)


def test_a_wide_baseline_spread_raises_the_bar() -> None:
    t = timings([0.2] * 8)
    narrow = expectation(signals=cpu_signals(0.4, 1.0), spread={WAIT_PER_CPU: 0.05})
    wide = expectation(signals=cpu_signals(0.4, 1.0), spread={WAIT_PER_CPU: 0.5})
    window = host_window(t, run_delay_s=1.5, cpu_s=1.0)
    assert attribute(t, narrow, window).cause(CPU) is not None
    assert attribute(t, wide, window).cause(CPU) is None  # 0.4 + 4 x 0.5 = 2.4 > 1.5


def test_contention_in_a_job_that_was_not_slower_is_a_note_not_a_cause() -> None:
    t = timings([0.1] * 8)
    exp = expectation(signals=cpu_signals(run_delay_s=0.1, cpu_s=1.0))
    d = attribute(t, exp, host_window(t, run_delay_s=2.0, cpu_s=1.0))
    assert d.cause(CPU) is None
    assert any(n.startswith("cpu_contention seen without cost") for n in d.notes)


def test_without_cpu_seconds_the_run_delays_are_compared_directly() -> None:
    t = timings([0.2] * 8)
    window = host_window(t, run_delay_s=1.0, cpu_s=0.0)  # CPU time unknown or zero
    exp = expectation(signals={"run_delay_s": 0.1})
    assert must(attribute(t, exp, window), CPU).seconds == pytest.approx(0.8)
    exp_busy = expectation(signals={"run_delay_s": 0.5})
    assert attribute(t, exp_busy, window).cause(CPU) is None  # 1.0 < 0.5 x 2.5


def test_many_busy_threads_share_the_cost_of_waiting() -> None:
    # A baseline run used 4 CPU seconds in 1 s: four threads busy at once on 8 cores, so
    # 2 s of extra waiting spread over them cost about 0.5 s of wall time.
    t = timings([0.2] * 8)
    exp = expectation(signals=cpu_signals(run_delay_s=0.2, cpu_s=4.0))
    d = attribute(t, exp, host_window(t, run_delay_s=2.2, cpu_s=4.0, cpu_count=8))
    c = must(d, CPU)
    assert c.details["parallelism"] == pytest.approx(4.0)
    assert c.seconds == pytest.approx(0.5)


def test_diagnosis_serialises_with_its_main_cause_and_logs_one_line() -> None:
    d = attribute(timings([0.1] * 8, queue=0.5), expectation())
    data = d.to_dict()
    assert data["main_cause"] == QUEUE and data["causes"][0]["kind"] == QUEUE
    line = d.log_line("j1")
    assert line.startswith("slow job j1: 1.50 s against 1.00 s expected") and "queue_wait" in line


def test_the_diagnoser_logs_slow_jobs_only() -> None:
    lines: list[str] = []

    class Engine:
        device = "cpu"

        class options:  # noqa: N801 - stands in for EngineOptions
            empty_cache_per_request = False

    diagnose = make_diagnoser(0.25, on_slow=lines.append)
    fast = diagnose(job_id="a", key=KEY, expectation=expectation(), timings=timings([0.1] * 8),
                    window=None, engine=Engine())
    slow = diagnose(job_id="b", key=KEY, expectation=expectation(),
                    timings=timings([0.2] * 8), window=None, engine=Engine())
    assert not fast["slow"] and slow["slow"]
    assert len(lines) == 1 and lines[0].startswith("slow job b")
