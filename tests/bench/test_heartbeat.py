"""Round checks from heartbeats, on scripted beats: gaps, too little achieved, the kinds."""

from __future__ import annotations

import json

from steadygen.bench.heartbeat import BeatLog, check_round
from tests.telemetry.helpers import FakeClock


def log_of(kind: str, beats: list[tuple[float, dict]]) -> BeatLog:
    clock = FakeClock(0.0)
    log = BeatLog(pid=7, kind=kind, clock=clock)
    for t, data in beats:
        clock.t = t
        log.add(json.dumps({"kind": kind, **data}) + "\n")
    log.add("a line that is not a beat\n")
    return log


def test_steady_cpu_beats_cover_the_round_and_give_the_share() -> None:
    log = log_of("cpu", [(t / 2, {"cpu_s": 0.45 * t}) for t in range(0, 21)])  # 90 % of a core
    check = check_round([log], 1.0, 9.0)
    assert check.valid and abs(check.achieved["cpu_pct"] - 90.0) < 1e-6


def test_a_gap_in_the_round_or_silence_at_its_end_is_invalid() -> None:
    gap = log_of("cpu", [(t, {"cpu_s": t}) for t in (0, 1, 2, 6, 7, 8, 9, 10)])
    assert "silent for 4.0 s" in check_round([gap], 1.0, 9.0).reason
    early_end = log_of("cpu", [(t, {"cpu_s": t}) for t in range(0, 5)])
    assert not check_round([early_end], 1.0, 9.0).valid


def test_too_little_achieved_is_invalid() -> None:
    idle = log_of("cpu", [(t, {"cpu_s": 0.01 * t}) for t in range(0, 11)])  # 1 % of a core
    assert "ran 1% of a core" in check_round([idle], 1.0, 9.0).reason
    gpu = log_of("gpu", [(t, {"tflops": 0.0 if t == 5 else 300.0}) for t in range(0, 11)])
    assert "no GPU throughput" in check_round([gpu], 1.0, 9.0).reason
    vram = log_of("vram", [(t, {"gib_held": 2.0}) for t in range(0, 11)])
    assert "held 2.00 GiB of 4.00 GiB" in check_round([vram], 1.0, 9.0, expect_gib=4.0).reason
    full = log_of("vram", [(t, {"gib_held": 4.0}) for t in range(0, 11)])
    assert check_round([full], 1.0, 9.0, expect_gib=4.0).valid


def test_a_round_shorter_than_a_beat_is_judged_on_the_beats_around_it() -> None:
    # Two quick jobs in 0.2 s, between two beats half a second apart: the burner was beating
    # on both sides of the round and ran 80 % of a core across it.
    log = log_of("cpu", [(0.0, {"cpu_s": 1.0}), (0.5, {"cpu_s": 1.4})])
    check = check_round([log], 0.1, 0.3)
    assert check.valid, check.reason
    assert abs(check.achieved["cpu_pct"] - 80.0) < 1e-6
    only_before = log_of("cpu", [(0.0, {"cpu_s": 1.0})])
    assert "sent one heartbeat only" in check_round([only_before], 0.1, 0.3).reason
