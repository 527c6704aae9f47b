"""The load generator with fake targets: open loop keeps its schedule whatever the server
does (no coordinated omission), closed loop keeps K clients busy, rounds interleave."""

from __future__ import annotations

import itertools
import random
import threading
import time
from contextlib import contextmanager
from typing import Any

import pytest

from steadygen.bench import runner
from steadygen.bench.interfere import InterferenceSpec
from steadygen.bench.runner import BenchPlan, run_batch, run_bench

SLEEP_S = 0.3


class SlowTarget:
    """run_one sleeps; it records when each call started and ended and how many overlapped."""

    def __init__(self, sleep_s: float = SLEEP_S, fail_every: int = 0):
        self.sleep_s = sleep_s
        self.fail_every = fail_every
        self.calls: list[dict[str, Any]] = []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        self._n = itertools.count(1)

    def run_one(self, raw: dict[str, Any]) -> dict[str, Any]:
        start_wall, start_mono = time.time(), time.monotonic()
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            n = next(self._n)
        time.sleep(self.sleep_s)
        with self._lock:
            self.in_flight -= 1
            self.calls.append({"seed": raw["seed"], "start_wall": start_wall,
                               "start_mono": start_mono, "end_wall": time.time()})
        if self.fail_every and n % self.fail_every == 0:
            raise RuntimeError("the server went away")
        return {"state": "succeeded", "timings": {"queue_wait_s": 0.01, "total_s": self.sleep_s,
                                                  "steps_s": [0.1, 0.1]},
                "diagnosis": {"main_cause": "queue_wait", "slow": True,
                              "causes": [{"kind": "queue_wait", "seconds": 0.01}]}}


def plan(**kw: Any) -> BenchPlan:
    return BenchPlan(request={"prompt": "p", "steps": 2}, **kw)


def test_open_loop_latency_runs_from_the_scheduled_arrival() -> None:
    target = SlowTarget()
    p = plan(rate=20.0, seed=3)
    records = run_batch(target, p, "A", 8, start_index=0, rnd=1, warmup=False,
                        interfered=False)
    assert [r.index for r in records] == list(range(8))
    assert all(r.state == "succeeded" for r in records)
    # The schedule is the seeded Poisson process: exponential gaps at 20 per second.
    rng = random.Random(p.seed * 1000 + 1)
    offsets = list(itertools.accumulate(rng.expovariate(20.0) for _ in range(8)))
    for r, off in zip(records, offsets, strict=True):
        assert r.t_submit - records[0].t_submit == pytest.approx(off - offsets[0], abs=0.05)
    calls = {c["seed"]: c for c in target.calls}
    for r in records:
        call = calls[1000 + r.index]
        assert r.latency_s >= SLEEP_S
        assert r.t_submit <= call["start_wall"] + 0.01  # arrival first, then the call
        assert r.latency_s >= call["end_wall"] - r.t_submit - 0.01  # counted from arrival
        assert r.queue_wait_s == 0.01 and r.service_s == SLEEP_S and r.steps_s == [0.1, 0.1]
        assert r.main_cause == "queue_wait" and r.slow and r.causes == {"queue_wait": 0.01}


def test_open_loop_arrivals_are_not_held_back_by_slow_runs() -> None:
    target = SlowTarget(sleep_s=SLEEP_S)
    run_batch(target, plan(rate=40.0, seed=1), "A", 10, 0, 0, False, False)
    starts = sorted(c["start_mono"] for c in target.calls)
    # Served one at a time, ten runs would need nine sleeps between the first and the last
    # start; arriving on their own schedule, they all start well within that.
    assert starts[-1] - starts[0] < 9 * SLEEP_S / 2
    assert target.max_in_flight >= 3


def test_closed_loop_keeps_k_clients_busy_and_no_more() -> None:
    target = SlowTarget(sleep_s=0.05)
    records = run_batch(target, plan(clients=3), "B", 9, start_index=5, rnd=0, warmup=False,
                        interfered=True)
    assert [r.index for r in records] == list(range(5, 14))
    assert target.max_in_flight == 3
    assert all(r.interfered and r.latency_s >= 0.05 for r in records)


def test_warm_up_runs_are_closed_loop_even_with_a_rate() -> None:
    target = SlowTarget(sleep_s=0.02)
    records = run_batch(target, plan(rate=1000.0, clients=1), "A", 3, 0, -1, True, False)
    assert target.max_in_flight == 1 and all(r.warmup for r in records)


def test_a_failed_run_is_a_result() -> None:
    records = run_batch(SlowTarget(sleep_s=0.01, fail_every=2), plan(), "A", 4, 0, 0, False,
                        False)
    assert [r.state for r in records].count("failed") == 2
    failed = next(r for r in records if r.state == "failed")
    assert failed.error is not None and "RuntimeError: the server went away" in failed.error


def test_rounds_alternate_the_order_and_interfere_in_marked_rounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[str] = []

    @contextmanager
    def fake_interference(spec: InterferenceSpec | None):  # type: ignore[no-untyped-def]
        started.append("on" if spec is not None else "off")
        yield

    monkeypatch.setattr(runner, "_interference", fake_interference)
    order: list[tuple[str, int]] = []

    class Named(SlowTarget):
        def __init__(self, name: str):
            super().__init__(sleep_s=0.0)
            self.name = name

        def run_one(self, raw: dict[str, Any]) -> dict[str, Any]:
            order.append((self.name, raw["seed"]))
            return super().run_one(raw)

    targets = {"A": Named("A"), "B": Named("B")}
    p = plan(runs=8, rounds=4, warmup_runs=1, interfere=InterferenceSpec("cpu"),
             interfere_every=2)
    records = run_bench(targets, p)
    assert started == ["off", "on", "off", "on"]
    names = [n for n, _ in order]
    assert names == ["A", "B"] + ["A", "A", "B", "B", "B", "B", "A", "A"] * 2
    timed = [r for r in records if not r.warmup]
    assert len(timed) == 16 and sum(r.warmup for r in records) == 2
    assert {r.round for r in timed if r.interfered} == {1, 3}
    assert sorted(r.index for r in timed if r.config == "A") == list(range(1, 9))


def test_an_interfered_round_without_heartbeats_is_marked_invalid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from steadygen.bench.heartbeat import InterferenceCheck
    from steadygen.bench.report import analyse

    rounds = iter([InterferenceCheck(False, "the gpu interferer (pid 9) sent no heartbeat "
                                     "during the round", {}),
                   InterferenceCheck(True, "", {"tflops": 250.0})])

    class Checked:
        def check(self, t0: float, t1: float) -> InterferenceCheck:
            assert t1 >= t0
            return next(rounds)

    @contextmanager
    def fake_interference(spec: InterferenceSpec | None):  # type: ignore[no-untyped-def]
        yield Checked() if spec is not None else None

    monkeypatch.setattr(runner, "_interference", fake_interference)
    said: list[str] = []
    p = plan(runs=4, rounds=4, warmup_runs=0, interfere=InterferenceSpec("gpu"),
             interfere_every=2)
    records = run_bench({"A": SlowTarget(sleep_s=0.0)}, p, progress=said.append)
    interfered = [r for r in records if r.interfered]
    assert [r.interference_valid for r in interfered] == [False, True]
    assert interfered[1].interference == {"valid": True, "reason": "",
                                          "achieved": {"tflops": 250.0}}
    assert any("interfered runs are invalid: the gpu interferer (pid 9) sent no heartbeat"
               in line for line in said)
    summary = analyse(records, ["A"])["configs"]["A"]
    assert summary["interfered"]["n"] == 1 and summary["interfered_invalid"] == 1
    assert all(r.interference_valid for r in records if not r.interfered)


@pytest.mark.parametrize("kind", ["gpu", "vram"])
def test_gpu_interference_without_cuda_is_refused_before_anything_loads(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from steadygen.bench import cli
    from steadygen.config import Settings
    from steadygen.errors import ConfigError

    def must_not_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("targets were built before the option was refused")

    monkeypatch.setattr(cli, "build_targets", must_not_load)
    monkeypatch.setattr(cli, "_cuda_here", lambda: False)
    opts = {"configs": [], "steps": 2, "guidance": 0.0, "n": 1, "runs": 4, "rounds": 2,
            "clients": 1, "warmup_runs": 1, "interfere": kind, "interfere_every": 2,
            "out": "unused"}
    with pytest.raises(ConfigError, match=f"--interfere {kind} needs a CUDA GPU"):
        cli.run_bench_command(Settings(), opts, "steadygen bench")


def test_without_cuda_here_the_check_says_so() -> None:
    import torch

    from steadygen.bench import cli

    assert cli._cuda_here() is torch.cuda.is_available()
