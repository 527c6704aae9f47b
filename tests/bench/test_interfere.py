"""CPU interferers are real processes, running when start() returns, stopped by their pid,
and bounded in time even if nobody stops them."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from steadygen.bench.interfere import READY_CPU_S, InterferenceSpec, Interferer
from steadygen.errors import ConfigError


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_cpu_burners_run_until_stopped_by_pid() -> None:
    with Interferer(InterferenceSpec("cpu", procs=2, seconds=60)) as burners:
        assert len(burners.pids) == 2
        for pid in burners.pids:
            proc = psutil.Process(pid)
            assert proc.name().startswith("python")  # what attribution names
            times = proc.cpu_times()
            assert times.user + times.system >= READY_CPU_S  # spinning already
        pids = list(burners.pids)
    assert all(gone(pid) for pid in pids)


def test_one_burner_per_core_by_default() -> None:
    with Interferer(InterferenceSpec("cpu", seconds=30)) as burners:
        assert len(burners.pids) == (psutil.cpu_count() or 1)


def test_burners_end_by_themselves() -> None:
    burners = Interferer(InterferenceSpec("cpu", procs=1, seconds=0.5)).start()
    try:
        proc = burners._procs[0]
        assert proc.wait(timeout=60) == 0  # its own deadline, not a kill
    finally:
        burners.stop()


@pytest.mark.skipif(Path("/dev/nvidiactl").exists(), reason="this machine has an NVIDIA GPU")
@pytest.mark.parametrize("kind", ["gpu", "vram"])
def test_a_gpu_interferer_without_a_gpu_is_an_error_not_a_quiet_no_op(kind: str) -> None:
    burners = Interferer(InterferenceSpec(kind, seconds=30, gib=0.1, size=64))
    try:
        burners.start()
    except ConfigError as exc:
        error = exc
    else:  # torch took longer than start()'s wait to import on this loaded machine
        burners._procs[0].wait(timeout=120)
        with pytest.raises(ConfigError) as caught:
            burners._check_alive()
        error = caught.value
    assert "exited at once with code 2 (2: no CUDA GPU" in str(error)
    assert burners.pids and all(gone(pid) for pid in burners.pids)
