"""NvmlBackend against the fake pynvml: units, missing fields, processes, counters."""

from __future__ import annotations

import logging
import os

import psutil
import pytest

from steadygen.telemetry import TelemetryUnavailable
from steadygen.telemetry.nvml import NvmlBackend

from . import fake_pynvml as fk
from .fake_pynvml import FakeDevice, FakeNvml, FakeProcess


def test_readings_decode_units_and_reasons(fake_nvml: FakeNvml) -> None:
    fake_nvml.devices[0].update(
        sm_clock_mhz=1755,
        sm_clock_max_mhz=1980,
        mem_clock_mhz=2619,
        power_mw=612_450,
        power_limit_mw=700_000,
        temp_c=71,
        util_gpu=98,
        util_mem=41,
        mem_used=40 << 30,
        pstate=2,
        clock_events=fk.SW_POWER_CAP | fk.HW_SLOWDOWN,
    )
    (g,) = NvmlBackend().read_gpus()
    assert g.index == 0 and g.name == "NVIDIA H100 80GB HBM3"
    assert g.sm_clock_hz == pytest.approx(1.755e9)
    assert g.sm_clock_max_hz == pytest.approx(1.98e9)
    assert g.mem_clock_hz == pytest.approx(2.619e9)
    assert g.power_w == pytest.approx(612.45)
    assert g.power_limit_w == pytest.approx(700.0)
    assert g.temp_c == 71 and g.temp_margin_c == 90 - 71
    assert g.util_gpu_pct == 98 and g.util_mem_pct == 41
    assert g.mem_used_bytes == 40 << 30 and g.mem_total_bytes == 80 << 30
    assert g.pstate == 2
    assert g.clock_event_mask == 0xC
    assert g.clock_events == ("sw_power_cap", "hw_slowdown")


def test_not_supported_costs_one_field_and_is_not_retried(fake_nvml: FakeNvml) -> None:
    dev = fake_nvml.devices[0]
    dev.unsupported |= {"nvmlDeviceGetPowerUsage", "nvmlDeviceGetMarginTemperature"}
    backend = NvmlBackend()
    for _ in range(3):
        (g,) = backend.read_gpus()
        assert g.power_w is None
        assert g.temp_margin_c == dev.slowdown_c - dev.temp_c  # from the threshold instead
        assert g.sm_clock_hz is not None and g.temp_c is not None
    assert fake_nvml.calls["nvmlDeviceGetPowerUsage"] == 1
    assert fake_nvml.calls["nvmlDeviceGetMarginTemperature"] == 1


def test_transient_error_is_logged_once_and_retried(
    fake_nvml: FakeNvml, caplog: pytest.LogCaptureFixture
) -> None:
    fake_nvml.devices[0].failing["nvmlDeviceGetUtilizationRates"] = fk.NVML_ERROR_UNKNOWN
    backend = NvmlBackend()
    with caplog.at_level(logging.WARNING, logger="steadygen.telemetry"):
        for _ in range(3):
            assert backend.read_gpus()[0].util_gpu_pct is None
    assert fake_nvml.calls["nvmlDeviceGetUtilizationRates"] == 3
    assert len([r for r in caplog.records if "UtilizationRates" in r.getMessage()]) == 1
    del fake_nvml.devices[0].failing["nvmlDeviceGetUtilizationRates"]
    assert backend.read_gpus()[0].util_gpu_pct == 0


def test_falls_back_to_deprecated_names(
    fake_nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev = fake_nvml.devices[0]
    dev.update(clock_events=fk.SW_THERMAL, temp_c=84)
    dev.unsupported.add("nvmlDeviceGetCurrentClocksEventReasons")
    monkeypatch.delattr(fk, "nvmlDeviceGetTemperatureV")  # an older nvidia-ml-py
    (g,) = NvmlBackend().read_gpus()
    assert g.clock_events == ("sw_thermal",)
    assert g.temp_c == 84
    assert fake_nvml.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] == 1
    assert fake_nvml.calls["nvmlDeviceGetTemperature"] == 1


def test_library_not_found_is_telemetry_unavailable(fake_nvml: FakeNvml) -> None:
    fake_nvml.init_error = fk.NVML_ERROR_LIBRARY_NOT_FOUND
    with pytest.raises(TelemetryUnavailable, match="NVML cannot start"):
        NvmlBackend()


def test_unknown_index_is_telemetry_unavailable(fake_nvml: FakeNvml) -> None:
    with pytest.raises(TelemetryUnavailable, match=r"GPU index \[3\] does not exist"):
        NvmlBackend([3])


def test_processes_ours_and_foreign(fake_nvml: FakeNvml) -> None:
    dev = fake_nvml.devices[0]
    dev.add_process(FakeProcess(pid=os.getpid(), used_bytes=20 << 30, sm_util=90))
    dev.add_process(FakeProcess(pid=4_194_000, used_bytes=None, kind="graphics"))
    procs = {p.pid: p for p in NvmlBackend().read_processes({os.getpid()})}
    ours, foreign = procs[os.getpid()], procs[4_194_000]
    assert ours.ours and ours.kind == "compute" and ours.used_bytes == 20 << 30
    assert ours.name == psutil.Process().name()
    assert ours.sm_util_pct == 90
    assert not foreign.ours and foreign.kind == "graphics"
    # the driver lists only processes that used the GPU: one absent from its answer was idle
    assert foreign.used_bytes is None and foreign.sm_util_pct == 0.0
    assert foreign.name is None  # no such pid here (e.g. another pid namespace)


def test_process_utilization_not_found_is_not_cached(fake_nvml: FakeNvml) -> None:
    backend = NvmlBackend()
    dev = fake_nvml.devices[0]
    dev.add_process(FakeProcess(pid=1234))  # no utilization samples: NVML says NotFound
    assert backend.read_processes(set())[0].sm_util_pct == 0.0  # idle, as NVML says
    dev.processes[0].sm_util, dev.processes[0].mem_util = 40, 70
    (proc,) = backend.read_processes(set())
    assert (proc.sm_util_pct, proc.mem_util_pct) == (40, 70)


def test_process_utilization_unavailable_is_unknown_not_idle(fake_nvml: FakeNvml) -> None:
    dev = fake_nvml.devices[0]
    dev.unsupported.add("nvmlDeviceGetProcessUtilization")  # MIG, older GPUs
    dev.add_process(FakeProcess(pid=1234, sm_util=40))
    (proc,) = NvmlBackend().read_processes(set())
    assert proc.sm_util_pct is None and proc.mem_util_pct is None


def test_counters_energy_and_throttle_fields(fake_nvml: FakeNvml) -> None:
    dev = fake_nvml.devices[0]
    dev.unsupported_fields.add(fk.NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN)
    dev.add_throttle("sw_power_cap", 1.5)
    backend = NvmlBackend()
    (c,) = backend.read_counters()
    assert c.energy_mj == 1_000_000
    assert c.throttle_ns["sw_power_cap"] == 1_500_000_000
    assert set(c.throttle_ns) == {"sw_power_cap", "sync_boost", "sw_thermal", "hw_power_brake"}
    (c2,) = backend.read_counters()
    assert set(c2.throttle_ns) == set(c.throttle_ns)


def test_static_info(fake_nvml: FakeNvml) -> None:
    fake_nvml.devices.append(
        FakeDevice(name="NVIDIA L4", persistence=fk.NVML_FEATURE_DISABLED, uuid="GPU-1")
    )
    backend = NvmlBackend([1])
    (info,) = backend.static_info()
    assert info.index == 1 and info.name == "NVIDIA L4" and info.uuid == "GPU-1"
    assert info.driver_version == "580.65.06" and info.cuda_driver_version == 13000
    assert info.persistence_mode is False
    assert info.slowdown_temp_c == 90 and info.shutdown_temp_c == 95
    assert info.power_default_limit_w == pytest.approx(700.0)
    assert [g.index for g in backend.read_gpus()] == [1]
    backend.close()
    assert fake_nvml.initialised == 0
