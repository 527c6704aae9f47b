"""Interferers are real processes that prove they interfere: each reports a heartbeat with
what it achieves, a round is checked against the beats all through it, and they are
stopped by their pid and bounded in time even if nobody stops them."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from steadygen.bench.heartbeat import MIN_CPU_PCT, check_round
from steadygen.bench.interfere import InterferenceSpec, Interferer, usable_cpus
from steadygen.errors import ConfigError


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def beats_for(burners: Interferer, seconds: float) -> tuple[float, float]:
    """A round of ``seconds`` with the burners running: its (t0, t1)."""
    t0 = time.monotonic()
    time.sleep(seconds)
    return t0, time.monotonic()


def test_cpu_burners_beat_and_run_until_stopped_by_pid() -> None:
    with Interferer(InterferenceSpec("cpu", procs=2, seconds=60)) as burners:
        assert len(burners.pids) == 2
        for pid in burners.pids:
            assert psutil.Process(pid).name().startswith("python")  # what attribution names
        check = burners.check(*beats_for(burners, 1.5))
        assert check.valid, check.reason
        assert check.achieved["cpu_pct"] >= 2 * MIN_CPU_PCT
        pids = list(burners.pids)
    assert all(gone(pid) for pid in pids)


def test_one_burner_per_cpu_our_process_may_use() -> None:
    with Interferer(InterferenceSpec("cpu", seconds=30)) as burners:
        assert len(burners.pids) == len(usable_cpus()) == len(os.sched_getaffinity(0))


def test_burners_end_by_themselves() -> None:
    burners = Interferer(InterferenceSpec("cpu", procs=1, seconds=0.5)).start()
    try:
        proc = burners._procs[0]
        assert proc.wait(timeout=60) == 0  # its own deadline, not a kill
    finally:
        burners.stop()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_burners_can_be_pinned_to_cpus() -> None:
    cpu = max(os.sched_getaffinity(0))
    with Interferer(InterferenceSpec.parse(f"cpu:procs=1,cpus={cpu},seconds=30")) as burners:
        assert psutil.Process(burners.pids[0]).cpu_affinity() == [cpu]


def test_a_detached_burner_is_outside_our_process_tree_and_session() -> None:
    spec = InterferenceSpec.parse("cpu:procs=1,seconds=30,detached=1")
    with Interferer(spec) as burners:
        (pid,) = burners.pids
        proc = psutil.Process(pid)
        assert proc.ppid() != os.getpid()
        assert pid not in {c.pid for c in psutil.Process().children(recursive=True)}
        assert os.getsid(pid) != os.getsid(0)
        check = burners.check(*beats_for(burners, 1.5))
        assert check.valid, check.reason
    deadline = time.monotonic() + 30
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(pid)


def test_a_burner_that_stops_beating_makes_the_round_invalid() -> None:
    with Interferer(InterferenceSpec("cpu", procs=1, seconds=60)) as burners:
        t0 = time.monotonic()
        time.sleep(0.6)
        os.kill(burners.pids[0], signal.SIGSTOP)  # frozen: no CPU, no beats
        try:
            time.sleep(1.6)
        finally:
            os.kill(burners.pids[0], signal.SIGCONT)
        t1 = time.monotonic()
        check = check_round(burners._logs, t0, t1, max_gap_s=1.0)
    assert not check.valid and "was silent for" in check.reason


def test_an_interferer_that_never_beats_makes_the_round_invalid() -> None:
    # As a GPU burner still importing torch on a loaded machine: alive, not interfering.
    quiet = [sys.executable, "-c", "import time; time.sleep(30)"]
    burners = Interferer(InterferenceSpec("gpu", seconds=30), commands=[quiet],
                         ready_timeout_s=0.5).start()
    try:
        check = burners.check(*beats_for(burners, 0.2))
    finally:
        burners.stop()
    assert not check.valid and "sent no heartbeat during the round" in check.reason


@pytest.mark.skipif(Path("/dev/nvidiactl").exists(), reason="this machine has an NVIDIA GPU")
@pytest.mark.parametrize("kind", ["gpu", "vram"])
def test_a_gpu_interferer_without_a_gpu_is_an_error_not_a_quiet_no_op(kind: str) -> None:
    burners = Interferer(InterferenceSpec(kind, seconds=30, gib=0.1, size=64))
    with pytest.raises(ConfigError) as caught:
        burners.start()  # waits for its first beat or its exit, however slow the import
    assert "exited at once with code 2 (2: no CUDA GPU" in str(caught.value)
    assert burners.pids and all(gone(pid) for pid in burners.pids)
