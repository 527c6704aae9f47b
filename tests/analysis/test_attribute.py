"""attribute() on synthetic jobs: the excess is split into measured causes, the remainder is
reported as it is (never forced to zero), and causes need evidence past the noise."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from steadygen.analysis.attribute import (
    ADAPTER,
    CAUSE_KINDS,
    CPU,
    MEMORY,
    OFFLOAD,
    QUEUE,
    Cause,
    Diagnosis,
    attribute,
    make_diagnoser,
)
from steadygen.analysis.baseline import WAIT_PER_CPU, Baselines
from steadygen.analysis.causes import MEASURED_PHASES, phase_seconds
from steadygen.analysis.cpu import competitors
from steadygen.engine.timings import Timings
from steadygen.telemetry import ForeignCpuProcess, HostReading, Sample
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


def test_a_first_run_books_only_its_visible_one_off_set_up_as_cold_start() -> None:
    # The first step paid 0.3 s of set-up (allocations, kernel selection): its excess
    # over the job's own later steps. That, not the whole excess, is the cold start.
    first = attribute(timings([0.4] + [0.1] * 7, first_of_shape=True), expectation(exact=False))
    c = must(first, "cold_start")
    assert c.seconds == pytest.approx(0.3)
    assert c.details["first_step_one_off_s"] == pytest.approx(0.3)
    assert c.details["first_of_shape"] and "first run of this shape" in c.evidence
    assert first.unexplained_s == pytest.approx(0.0, abs=1e-9)
    assert any("scaled from another shape" in n for n in first.notes)


def test_a_first_run_slow_in_every_step_is_not_all_cold_start() -> None:
    # Every step took twice the baseline: nothing one-off about it. The excess stays
    # unexplained (or goes to a measured cause), never booked to the first run wholesale.
    d = attribute(timings([0.2] * 8, first_of_shape=True), expectation(exact=False))
    assert d.cause("cold_start") is None
    assert d.unexplained_s == pytest.approx(0.8)
    assert any(n.startswith("cold_start measured below the noise floor") for n in d.notes)


def test_cpu_contention_on_a_first_run_is_still_named() -> None:
    t = timings([0.45] + [0.2] * 7, first_of_shape=True)  # set-up 0.25 s, then contended
    exp = expectation(signals=cpu_signals(run_delay_s=0.1, cpu_s=1.0),
                      spread={WAIT_PER_CPU: 0.02})
    d = attribute(t, exp, host_window(t, run_delay_s=1.2, cpu_s=1.0))
    assert must(d, "cold_start").seconds == pytest.approx(0.25)
    assert must(d, CPU).seconds == pytest.approx(0.8)  # 1.1 s extra wait, capped by the rest
    assert d.unexplained_s == pytest.approx(0.0, abs=1e-9)


def test_load_and_warm_up_paid_in_a_job_are_cold_start() -> None:
    d = attribute(timings([0.1] * 8, load=1.5, warmup=0.5), expectation())
    assert must(d, "cold_start").seconds == pytest.approx(2.0)
    assert "model load 1.500 s" in must(d, "cold_start").evidence
    assert must(d, "cold_start").details["warmup_s"] == 0.5


def test_cache_emptying_is_booked_at_its_measured_cost() -> None:
    # 10 ms: under the 5 % noise floor. The setting asked for it, but it cost nothing
    # worth naming: a note says what it took, no cause is blamed.
    cheap = attribute(timings([0.1] * 8, memory=0.01), expectation(),
                      empty_cache_per_request=True)
    assert cheap.cause(MEMORY) is None
    assert any(n.startswith("memory_management measured below the noise floor")
               and "per-request cache emptying" in n for n in cheap.notes)
    assert cheap.unexplained_s == pytest.approx(0.01)  # not named: left in the remainder
    big = attribute(timings([0.1] * 8, memory=0.3), expectation(),
                    empty_cache_per_request=True)
    assert must(big, MEMORY).seconds == pytest.approx(0.3)
    assert must(big, MEMORY).details["empty_cache_per_request"] is True
    incidental = attribute(timings([0.1] * 8, memory=0.3), expectation())
    assert must(incidental, MEMORY).details["empty_cache_per_request"] is False


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
    assert c.details["wait_per_cpu_limit"] == pytest.approx(0.18)  # 0.1 + 4 x 0.02
    assert c.details["calibration"]["runs"] == 20
    assert "calibrated on 20 clean runs of this machine" in c.evidence
    assert c.details["competitors"] == [{"name": "python3", "cpu_pct": 185.0,
                                         "pids": [4321, 4322],
                                         "confined_to_our_cpus": False}]
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


def test_waiting_within_the_machines_calibrated_spread_is_not_contention() -> None:
    # A shared machine's clean runs wait 0.4 s per CPU second, spread 0.15: 0.8 is usual
    # there (limit 0.4 + 4 x 0.15 = 1.0), though it would be contention on a quiet one.
    t = timings([0.2] * 8)
    exp = expectation(signals=cpu_signals(run_delay_s=0.4, cpu_s=1.0),
                      spread={WAIT_PER_CPU: 0.15})
    d = attribute(t, exp, host_window(t, run_delay_s=0.8, cpu_s=1.0))
    assert d.cause(CPU) is None and d.unexplained_s == pytest.approx(0.8)


def test_on_a_quiet_machine_small_waits_count_once_they_cost_something() -> None:
    # A quiet machine's clean runs wait 0.02 s per CPU second, spread 0.005: its bar is
    # 0.04. A 0.06 s wait is past it but costs 0.04 s, below the noise floor (5 % of 1 s);
    # a 0.2 s wait costs 0.18 s and is named.
    t = timings([0.2] * 8)
    exp = expectation(signals=cpu_signals(run_delay_s=0.02, cpu_s=1.0),
                      spread={WAIT_PER_CPU: 0.005})
    assert attribute(t, exp, host_window(t, run_delay_s=0.06, cpu_s=1.0)).cause(CPU) is None
    found = must(attribute(t, exp, host_window(t, run_delay_s=0.2, cpu_s=1.0)), CPU)
    assert found.seconds == pytest.approx(0.18)


def test_without_enough_clean_runs_contention_is_not_named() -> None:
    t = timings([0.2] * 8)
    exp = expectation(signals=cpu_signals(run_delay_s=0.1, cpu_s=1.0), runs=3)
    assert attribute(t, exp, host_window(t, run_delay_s=2.0, cpu_s=1.0)).cause(CPU) is None


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
    exp = expectation(signals={"run_delay_s": 0.1}, spread={"run_delay_s": 0.05})
    assert must(attribute(t, exp, window), CPU).seconds == pytest.approx(0.8)
    exp_busy = expectation(signals={"run_delay_s": 0.5}, spread={"run_delay_s": 0.2})
    assert attribute(t, exp_busy, window).cause(CPU) is None  # 1.0 < 0.5 + 4 x 0.2


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


@dataclass
class TimingsWithNewPhases(Timings):
    """The engine's Timings once the offload and adapter phases land (other work adds them
    to steadygen/engine/timings.py); attribution must read them already."""

    offload_s: float = 0.0
    adapter_s: float = 0.0


def with_phases(t: Timings, **phases: float) -> TimingsWithNewPhases:
    out = TimingsWithNewPhases(**{f: getattr(t, f) for f in Timings.__dataclass_fields__})
    for name, value in phases.items():
        setattr(out, name, value)
    out.total_s = t.total_s + sum(phases.values())  # the engine's total includes them
    return out


def test_measured_phases_are_booked_through_one_table() -> None:
    assert {p.kind for p in MEASURED_PHASES} <= set(CAUSE_KINDS)
    assert {OFFLOAD, ADAPTER} <= set(CAUSE_KINDS) and len(set(CAUSE_KINDS)) == len(CAUSE_KINDS)
    t = with_phases(timings([0.1] * 8), offload_s=0.4, adapter_s=0.25)
    d = attribute(t, expectation())
    assert must(d, OFFLOAD).seconds == pytest.approx(0.4)
    assert must(d, ADAPTER).seconds == pytest.approx(0.25)
    assert "moving weights between CPU and GPU 0.400 s" in must(d, OFFLOAD).evidence
    assert d.unexplained_s == pytest.approx(0.0, abs=1e-9)
    # Timings without those fields (the engine today) read them as zero
    assert phase_seconds(timings([0.1] * 8), "offload_s") == 0.0
    assert attribute(timings([0.1] * 8), expectation()).causes == []


def test_an_adapter_switch_is_named_below_the_share_floor_and_other_phases_are_noted() -> None:
    # 10 ms of 1 s is under the 5 % floor; a LoRA switch is still this job's own event and is
    # named, whatever the expectation; an offload that cheap is a note, a queue wait nothing.
    t = with_phases(timings([0.1] * 8), adapter_s=0.01, offload_s=0.01)
    t.queue_wait_s = 0.01
    d = attribute(t, expectation())
    assert kinds(d) == {ADAPTER}
    assert must(d, ADAPTER).seconds == pytest.approx(0.01)
    assert any(n.startswith("offload measured below the noise floor") for n in d.notes)
    assert not any(n.startswith("queue_wait") for n in d.notes)
    # under MIN_SECONDS (2 ms) even a switch is noise: said, not named
    d = attribute(with_phases(timings([0.1] * 8), adapter_s=0.001), expectation())
    assert d.causes == []
    assert any(n.startswith("adapter_switch measured below the noise floor") for n in d.notes)


def test_a_phase_every_run_pays_is_left_out_of_the_expectation_and_booked() -> None:
    # A low-VRAM mode offloads in every run: the baseline keeps that phase apart, so the
    # expectation is the work without it and the offload shows as its own cause.
    b = Baselines()
    for _ in range(5):
        run = with_phases(timings([0.1] * 8), offload_s=0.5).to_dict()
        assert b.add(KEY, run)
    exp = b.expected(KEY)
    assert exp is not None and exp.phases["offload"] == pytest.approx(0.5)
    d = attribute(with_phases(timings([0.1] * 8), offload_s=0.5), exp)
    assert d.expected_s == pytest.approx(EXPECTED)
    assert must(d, OFFLOAD).seconds == pytest.approx(0.5)
    assert d.unexplained_s == pytest.approx(0.0, abs=1e-9)


def test_competitors_are_those_that_may_run_on_our_cpus_confined_ones_first() -> None:
    def sample(t: float) -> Sample:
        return Sample(t_mono=t, t_wall=t, host=HostReading(cpu_affinity=(0,), top_foreign=(
            ForeignCpuProcess(11, "build", 95.0, cpu_affinity=(0, 1)),
            ForeignCpuProcess(12, "other-core-burner", 99.0, cpu_affinity=(1,)),
            ForeignCpuProcess(13, "burner", 30.0, cpu_affinity=(0,)),
            ForeignCpuProcess(14, "unknown", 40.0),
        )))

    found = competitors([sample(1.0), sample(2.0)], {0})
    assert [c["name"] for c in found] == ["burner", "build", "unknown"]
    assert found[0]["confined_to_our_cpus"] and found[0]["pids"] == [13]
    assert "other-core-burner" not in {c["name"] for c in competitors([sample(1.0)], {0}, n=9)}
