"""steadygen doctor: each check's status and exact fix command, against the fake NVML and a
fake /proc and /sys tree; the real command here (no GPU); and it never runs a command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from steadygen import doctor
from steadygen.config import Settings
from steadygen.doctor import FAIL, OK, SKIP, WARN, Check, gpu_checks, host_checks, run_doctor
from steadygen.telemetry.nvml import NvmlBackend
from tests.telemetry import fake_pynvml
from tests.telemetry.fake_pynvml import FakeDevice, FakeNvml, FakeProcess

GIB = 1 << 30


@pytest.fixture
def install_nvml(monkeypatch: pytest.MonkeyPatch) -> Iterator:  # type: ignore[type-arg]
    """``install_nvml(FakeNvml(...))``: ``import pynvml`` now gets the fake with that state."""
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml)
    yield fake_pynvml.install
    fake_pynvml.install(FakeNvml())


@pytest.fixture
def no_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to start a process fails the test: the doctor only prints fixes."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"the doctor tried to run a command: {args!r}")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    for name in ("system", "popen", "execv", "execve", "execvp", "execvpe", "spawnv",
                 "spawnvp", "posix_spawn", "posix_spawnp", "fork"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, refuse)


def healthy() -> FakeDevice:
    return FakeDevice(sm_clock_mhz=345, util_gpu=0, temp_c=34, persistence=1,
                      power_limit_mw=700_000, power_default_limit_mw=700_000)


def unhealthy(foreign_pid: int) -> FakeDevice:
    return FakeDevice(
        persistence=fake_pynvml.NVML_FEATURE_DISABLED,
        power_limit_mw=450_000, power_default_limit_mw=700_000,  # capped below the default
        sm_clock_mhz=1980, sm_clock_max_mhz=1980, util_gpu=0,  # at max while idle: locked
        temp_c=86, slowdown_c=90,  # 4 C from slowdown
        mem_used=9 * GIB,
        processes=[FakeProcess(pid=foreign_pid, used_bytes=8 * GIB)],  # holds, computes not
    )


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def test_an_unhealthy_gpu_gets_each_warning_with_its_exact_fix(
    install_nvml, no_commands: None  # type: ignore[no-untyped-def]
) -> None:
    install_nvml(FakeNvml(devices=[unhealthy(4242)], driver_version="470.57.02"))
    backend = NvmlBackend()
    try:
        checks = by_name(gpu_checks(backend, Settings()))
    finally:
        backend.close()
    assert checks["NVML"].status == OK
    driver = checks["GPU 0 driver"]
    assert driver.status == WARN and "470.57.02" in driver.detail and "535" in driver.fix
    pm = checks["GPU 0 persistence mode"]
    assert (pm.status, pm.fix) == (WARN, "sudo nvidia-smi -i 0 -pm 1")
    power = checks["GPU 0 power limit"]
    assert (power.status, power.fix) == (WARN, "sudo nvidia-smi -i 0 -pl 700")
    assert "450 W" in power.detail and "700 W" in power.detail
    clocks = checks["GPU 0 clocks"]
    assert clocks.status == WARN and "locked" in clocks.detail
    assert clocks.fix == "sudo nvidia-smi -i 0 -rgc && sudo nvidia-smi -i 0 -rac"
    temp = checks["GPU 0 temperature"]
    assert temp.status == WARN and "86 C" in temp.detail and "4 C to slowdown" in temp.detail
    assert temp.fix.startswith("nvidia-smi -i 0 -q -d TEMPERATURE")
    others = checks["GPU 0 other processes"]
    assert others.status == WARN
    assert "looks idle but 8.0 GiB is held" in others.detail and "pid 4242" in others.detail
    assert others.fix.startswith("kill 4242")
    assert not any(c.status == FAIL for c in checks.values())


def test_a_healthy_gpu_passes_and_the_doctor_exits_zero(
    install_nvml, no_commands: None, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
    capsys: pytest.CaptureFixture[str],
) -> None:
    install_nvml(FakeNvml(devices=[healthy()]))
    monkeypatch.setattr(doctor, "open_backend", lambda: (NvmlBackend(), ""))
    assert run_doctor(Settings(), as_json=True) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    gpu = [c for c in report["checks"] if c["name"] == "NVML" or c["name"].startswith("GPU 0")]
    assert {c["name"] for c in gpu} == {
        "NVML", "GPU 0 driver", "GPU 0 persistence mode", "GPU 0 clocks", "GPU 0 power limit",
        "GPU 0 temperature", "GPU 0 other processes", "GPU 0 memory mode"}
    assert all(c["status"] == OK and c["fix"] == "" for c in gpu), gpu


def test_a_hardware_slowdown_fails_and_the_exit_code_says_so(
    install_nvml, no_commands: None, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
    capsys: pytest.CaptureFixture[str],
) -> None:
    dev = healthy()
    dev.update(sm_clock_mhz=900, util_gpu=100, clock_events=fake_pynvml.SW_THERMAL, temp_c=70)
    install_nvml(FakeNvml(devices=[dev]))
    monkeypatch.setattr(doctor, "open_backend", lambda: (NvmlBackend(), ""))
    assert run_doctor(Settings(), as_json=True) == 1
    report = json.loads(capsys.readouterr().out)
    clocks = by_name([Check(**c) for c in report["checks"]])["GPU 0 clocks"]
    assert clocks.status == FAIL and "sw_thermal" in clocks.detail
    assert clocks.fix == "nvidia-smi -i 0 -q -d PERFORMANCE,TEMPERATURE,POWER"
    assert report["ok"] is False


def test_a_gpu_shared_with_a_computing_process_warns(install_nvml) -> None:  # type: ignore[no-untyped-def]
    dev = healthy()
    dev.update(util_gpu=90, sm_clock_mhz=1700)
    dev.add_process(FakeProcess(pid=5150, used_bytes=2 * GIB, sm_util=80))
    dev.add_process(FakeProcess(pid=os.getpid(), used_bytes=20 * GIB))  # ours: not listed
    install_nvml(FakeNvml(devices=[dev]))
    backend = NvmlBackend()
    checks = by_name(gpu_checks(backend, Settings()))
    backend.close()
    others = checks["GPU 0 other processes"]
    assert others.status == WARN and "sharing the GPU with" in others.detail
    assert "5150" in others.fix and str(os.getpid()) not in others.detail


def test_without_a_driver_the_gpu_checks_are_skipped() -> None:
    if Path("/dev/nvidiactl").exists():
        pytest.skip("this machine has an NVIDIA driver node")
    (nvml,) = gpu_checks(None, Settings(), "NVML Shared Library Not Found")
    assert nvml.status == SKIP and "Not Found" in nvml.detail and nvml.fix == ""


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def psi(avg10: float) -> str:
    return (f"some avg10={avg10:.2f} avg60=1.00 avg300=0.50 total=123456\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")


def test_host_checks_on_a_fake_tree(tmp_path: Path) -> None:
    write(tmp_path, "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor", "performance\n")
    write(tmp_path, "sys/devices/system/cpu/cpu1/cpufreq/scaling_governor", "powersave\n")
    write(tmp_path, "proc/pressure/cpu", psi(55.0))
    write(tmp_path, "proc/pressure/memory", psi(1.0))
    checks = by_name(host_checks(tmp_path))
    gov = checks["CPU governor"]
    assert gov.status == WARN and "powersave" in gov.detail
    assert gov.fix == "sudo cpupower frequency-set -g performance"
    cpu = checks["cpu pressure"]
    assert cpu.status == WARN and "55.0 %" in cpu.detail and cpu.fix.startswith("ps -eo")
    assert checks["memory pressure"].status == OK
    assert checks["io pressure"].status == SKIP  # no PSI file


def test_a_quiet_performance_host_is_ok(tmp_path: Path) -> None:
    for cpu in (0, 1):
        write(tmp_path, f"sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor",
              "performance\n")
    for res in ("cpu", "memory", "io"):
        write(tmp_path, f"proc/pressure/{res}", psi(0.5))
    assert {c.status for c in host_checks(tmp_path)} == {OK}


def test_host_checks_only_ever_warn(tmp_path: Path) -> None:
    write(tmp_path, "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor", "powersave\n")
    for res in ("cpu", "memory", "io"):
        write(tmp_path, f"proc/pressure/{res}", psi(99.0))
    statuses = {c.name: c.status for c in host_checks(tmp_path)}
    assert set(statuses.values()) == {WARN}
    assert host_checks(tmp_path / "missing")[0].status == SKIP  # a VM without cpufreq


def test_software_checks_flag_per_request_cache_emptying(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    checks = by_name(doctor.software_checks(Settings(empty_cache_per_request=True)))
    assert checks["torch"].status == OK and checks["diffusers"].status == OK
    alloc = checks["PYTORCH_CUDA_ALLOC_CONF"]
    assert alloc.status == WARN
    assert alloc.fix == "export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"
    visible = checks["CUDA_VISIBLE_DEVICES"]
    assert (visible.status, visible.fix) == (WARN, "unset CUDA_VISIBLE_DEVICES")
    assert checks["per-request cache emptying"].status == WARN


def test_the_doctor_never_runs_a_command(no_commands: None,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    run_doctor(Settings(), as_json=False)  # the real host, with the real NVML attempt
    assert "steadygen doctor" in capsys.readouterr().out
    source = Path(doctor.__file__).read_text()
    assert "subprocess" not in source and "os.system" not in source


def test_the_real_command_here_exits_zero_with_gpu_checks_skipped(run_cli) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("doctor", "--json")
    report = json.loads(result.stdout)
    checks = by_name([Check(**c) for c in report["checks"]])
    host = [c for c in checks.values() if c.name in ("CPU governor", "cpu pressure",
                                                     "memory pressure", "io pressure")]
    assert len(host) == 4 and all(c.status != FAIL for c in host)  # pressure only warns
    if not Path("/dev/nvidiactl").exists():
        assert checks["NVML"].status == SKIP
        assert result.returncode == 0 and report["ok"] is True, result.stderr
    assert result.returncode == (0 if report["ok"] else 1)


@pytest.mark.parametrize(
    ("total_gib", "asked", "status", "says"),
    [
        (141, "auto", OK, "high (auto picks it)"),
        (24, "auto", OK, "balanced (auto picks it)"),
        (12, "auto", OK, "low (auto picks it)"),
        (12, "high", WARN, "memory=high may not fit 12 GiB; low suits it"),
        (80, "low", OK, "high would move fewer weights"),
    ],
)
def test_the_memory_mode_is_recommended_from_the_cards_memory(
    install_nvml, total_gib: int, asked: str, status: str, says: str,  # type: ignore[no-untyped-def]
) -> None:
    install_nvml(FakeNvml(devices=[FakeDevice(mem_total=total_gib * GIB, mem_used=0)]))
    checks = by_name(gpu_checks(NvmlBackend(), Settings(memory=asked)))
    check = checks["GPU 0 memory mode"]
    assert check.status == status and says in check.detail, check
    if status == WARN:
        assert check.fix.startswith("steadygen serve --memory low")
