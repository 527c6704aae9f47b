"""A scriptable stand-in for ``pynvml`` (nvidia-ml-py) with the real names, types and errors.

Every ``nvml*``/``NVML*``/``c_nvml*`` name defined here exists in the real module
(``test_fake_pynvml_matches_real`` checks it, constants included), so code tested against the
fake calls what it would call on a GPU. State lives in ``FakeNvml``/``FakeDevice`` objects
that a test changes between reads::

    nv = FakeNvml([FakeDevice(name="NVIDIA H100")])
    install(nv)                        # or the ``fake_nvml`` fixture in conftest.py
    nv.devices[0].update(sm_clock_mhz=1400, clock_events=SW_THERMAL, temp_c=88)
    nv.devices[0].add_process(FakeProcess(pid=4242, used_bytes=3 << 30))
    nv.devices[0].add_throttle("sw_thermal", 0.4)   # seconds of throttle-time counter
"""

from __future__ import annotations

import string
import sys
from collections import Counter
from ctypes import Structure, Union, c_int64, c_uint, c_uint32, c_ulonglong, c_ushort
from dataclasses import dataclass, field
from typing import Any

# -- constants (values as in the real pynvml) ------------------------------------------------

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999

NVML_FEATURE_DISABLED = 0
NVML_FEATURE_ENABLED = 1
NVML_CLOCK_GRAPHICS = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_TEMPERATURE_GPU = 0
NVML_TEMPERATURE_THRESHOLD_SHUTDOWN = 0
NVML_TEMPERATURE_THRESHOLD_SLOWDOWN = 1
NVML_TEMPERATURE_THRESHOLD_MEM_MAX = 2
NVML_TEMPERATURE_THRESHOLD_GPU_MAX = 3
NVML_VALUE_TYPE_UNSIGNED_LONG_LONG = 3

NVML_FI_DEV_PERF_POLICY_POWER = 74
NVML_FI_DEV_PERF_POLICY_SYNC_BOOST = 76
NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_POWER_CAP = NVML_FI_DEV_PERF_POLICY_POWER
NVML_FI_DEV_CLOCKS_EVENT_REASON_SYNC_BOOST = NVML_FI_DEV_PERF_POLICY_SYNC_BOOST
NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN = 269
NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN = 270
NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN = 271

nvmlClocksEventReasonGpuIdle = 0x1
nvmlClocksEventReasonApplicationsClocksSetting = 0x2
nvmlClocksEventReasonSwPowerCap = 0x4
nvmlClocksEventReasonHwSlowdown = 0x8
nvmlClocksEventReasonSyncBoost = 0x10
nvmlClocksEventReasonSwThermalSlowdown = 0x20
nvmlClocksEventReasonHwThermalSlowdown = 0x40
nvmlClocksEventReasonHwPowerBrakeSlowdown = 0x80
nvmlClocksEventReasonDisplayClockSetting = 0x100
nvmlClocksEventReasonNone = 0x0

# Short aliases for scripting (not part of pynvml).
GPU_IDLE = nvmlClocksEventReasonGpuIdle
SW_POWER_CAP = nvmlClocksEventReasonSwPowerCap
HW_SLOWDOWN = nvmlClocksEventReasonHwSlowdown
SW_THERMAL = nvmlClocksEventReasonSwThermalSlowdown
HW_THERMAL = nvmlClocksEventReasonHwThermalSlowdown
FIELD_OF_REASON = {
    "sw_power_cap": NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_POWER_CAP,
    "sync_boost": NVML_FI_DEV_CLOCKS_EVENT_REASON_SYNC_BOOST,
    "sw_thermal": NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN,
    "hw_thermal": NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN,
    "hw_power_brake": NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN,
}

# -- errors: a subclass per NVML_ERROR_* code, made the way the real module makes them -------


class NVMLError(Exception):
    _valClassMapping: dict[int, type[NVMLError]] = {}

    def __new__(cls, value: int):
        if cls is NVMLError:
            cls = NVMLError._valClassMapping.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __str__(self) -> str:
        return f"NVML error {self.value} ({type(self).__name__})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NVMLError) and self.value == other.value

    __hash__ = Exception.__hash__


def _make_error_classes() -> None:
    module = sys.modules[__name__]
    for const in [n for n in dir(module) if n.startswith("NVML_ERROR_")]:
        suffix = string.capwords(const.removeprefix("NVML_ERROR_"), "_").replace("_", "")
        code = getattr(module, const)

        def new(cls: type, *args: Any, _code: int = code) -> NVMLError:
            return NVMLError.__new__(cls, _code)

        cls = type(f"NVMLError_{suffix}", (NVMLError,), {"__new__": new})
        cls.__module__ = __name__
        setattr(module, cls.__name__, cls)
        NVMLError._valClassMapping[code] = cls


_make_error_classes()
# Bound for type checkers and readers; set by _make_error_classes above.
NVMLError_NotSupported: type[NVMLError] = sys.modules[__name__].NVMLError_NotSupported
NVMLError_NotFound: type[NVMLError] = sys.modules[__name__].NVMLError_NotFound
NVMLError_LibraryNotFound: type[NVMLError] = sys.modules[__name__].NVMLError_LibraryNotFound

# -- return types ---------------------------------------------------------------------------


class c_nvmlUtilization_t(Structure):
    _fields_ = [("gpu", c_uint), ("memory", c_uint)]


class c_nvmlMemory_t(Structure):
    _fields_ = [("total", c_ulonglong), ("free", c_ulonglong), ("used", c_ulonglong)]


class c_nvmlValue_t(Union):
    _fields_ = [("uiVal", c_uint), ("ullVal", c_ulonglong), ("usVal", c_ushort)]


class c_nvmlFieldValue_t(Structure):
    _fields_ = [
        ("fieldId", c_uint32),
        ("scopeId", c_uint32),
        ("timestamp", c_int64),
        ("latencyUsec", c_int64),
        ("valueType", c_uint),
        ("nvmlReturn", c_uint),
        ("value", c_nvmlValue_t),
    ]


class c_nvmlProcessUtilizationSample_t(Structure):
    _fields_ = [
        ("pid", c_uint),
        ("timeStamp", c_ulonglong),
        ("smUtil", c_uint),
        ("memUtil", c_uint),
        ("encUtil", c_uint),
        ("decUtil", c_uint),
    ]


class nvmlFriendlyObject:
    """What the real module returns for process lists: attributes from a dict."""

    def __init__(self, dictionary: dict[str, Any]):
        for key, value in dictionary.items():
            setattr(self, key, value)


# -- scriptable state -----------------------------------------------------------------------


@dataclass
class FakeProcess:
    pid: int
    used_bytes: int | None = 1 << 30
    kind: str = "compute"  # or "graphics"
    sm_util: int | None = None  # a per-process utilization sample when set
    mem_util: int = 0  # its memUtil (memory-bandwidth share) in that sample


@dataclass
class FakeDevice:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    sm_clock_mhz: int = 1980
    sm_clock_max_mhz: int = 1980
    mem_clock_mhz: int = 2619
    mem_clock_max_mhz: int = 2619
    util_gpu: int = 0
    util_mem: int = 0
    power_mw: int = 70_000
    power_limit_mw: int = 700_000
    power_default_limit_mw: int = 700_000
    temp_c: int = 35
    margin_c: int | None = None  # None: NVML answers slowdown - temp
    slowdown_c: int = 90
    shutdown_c: int = 95
    gpu_max_c: int = 87
    mem_total: int = 80 << 30
    mem_used: int = 1 << 30
    pstate: int = 0
    clock_events: int = 0
    persistence: int = NVML_FEATURE_ENABLED
    energy_mj: int = 1_000_000
    throttle_ns: dict[int, int] = field(
        default_factory=lambda: dict.fromkeys(FIELD_OF_REASON.values(), 0)
    )
    processes: list[FakeProcess] = field(default_factory=list)
    unsupported: set[str] = field(default_factory=set)  # function names -> NotSupported
    failing: dict[str, int] = field(default_factory=dict)  # function name -> NVML_ERROR_* code
    unsupported_fields: set[int] = field(default_factory=set)
    util_samples_ts: int = 0

    def update(self, **changes: Any) -> None:
        for key, value in changes.items():
            if not hasattr(self, key):
                raise AttributeError(f"FakeDevice has no field {key!r}")
            setattr(self, key, value)

    def add_process(self, proc: FakeProcess) -> None:
        self.processes.append(proc)

    def remove_process(self, pid: int) -> None:
        self.processes = [p for p in self.processes if p.pid != pid]

    def add_throttle(self, reason: str, seconds: float) -> None:
        fid = FIELD_OF_REASON[reason]
        self.throttle_ns[fid] = self.throttle_ns.get(fid, 0) + round(seconds * 1e9)

    def add_energy(self, joules: float) -> None:
        self.energy_mj += round(joules * 1000)


@dataclass
class FakeNvml:
    devices: list[FakeDevice] = field(default_factory=lambda: [FakeDevice()])
    driver_version: str = "580.65.06"
    cuda_driver_version: int = 13000
    init_error: int | None = None  # e.g. NVML_ERROR_LIBRARY_NOT_FOUND
    calls: Counter[str] = field(default_factory=Counter)
    initialised: int = 0


_state: FakeNvml | None = None


def install(state: FakeNvml) -> FakeNvml:
    """Make ``state`` what the module-level functions answer from."""
    global _state
    _state = state
    return state


def _nv(fname: str) -> FakeNvml:
    if _state is None:
        raise RuntimeError("fake_pynvml.install(FakeNvml(...)) first")
    _state.calls[fname] += 1
    if _state.init_error is None and _state.initialised == 0 and fname != "nvmlInit":
        raise NVMLError(NVML_ERROR_UNINITIALIZED)
    return _state


def _dev(fname: str, handle: FakeDevice) -> FakeDevice:
    _nv(fname)
    if fname in handle.unsupported:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    if fname in handle.failing:
        raise NVMLError(handle.failing[fname])
    return handle


# -- the functions the real module exports (same names, same argument order) ----------------


def nvmlInit() -> None:
    nv = _nv("nvmlInit")
    if nv.init_error is not None:
        raise NVMLError(nv.init_error)
    nv.initialised += 1


def nvmlShutdown() -> None:
    nv = _nv("nvmlShutdown")
    nv.initialised = max(0, nv.initialised - 1)


def nvmlSystemGetDriverVersion() -> str:
    return _nv("nvmlSystemGetDriverVersion").driver_version


def nvmlSystemGetCudaDriverVersion() -> int:
    return _nv("nvmlSystemGetCudaDriverVersion").cuda_driver_version


def nvmlDeviceGetCount() -> int:
    return len(_nv("nvmlDeviceGetCount").devices)


def nvmlDeviceGetHandleByIndex(index: int) -> FakeDevice:
    devices = _nv("nvmlDeviceGetHandleByIndex").devices
    if not 0 <= index < len(devices):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return devices[index]


def nvmlDeviceGetName(handle: FakeDevice) -> str:
    return _dev("nvmlDeviceGetName", handle).name


def nvmlDeviceGetUUID(handle: FakeDevice) -> str:
    return _dev("nvmlDeviceGetUUID", handle).uuid


def nvmlDeviceGetPersistenceMode(handle: FakeDevice) -> int:
    return _dev("nvmlDeviceGetPersistenceMode", handle).persistence


def nvmlDeviceGetClockInfo(handle: FakeDevice, type: int) -> int:  # noqa: A002 - real name
    d = _dev("nvmlDeviceGetClockInfo", handle)
    return {
        NVML_CLOCK_SM: d.sm_clock_mhz,
        NVML_CLOCK_GRAPHICS: d.sm_clock_mhz,
        NVML_CLOCK_MEM: d.mem_clock_mhz,
    }[type]


def nvmlDeviceGetMaxClockInfo(handle: FakeDevice, type: int) -> int:  # noqa: A002 - real name
    d = _dev("nvmlDeviceGetMaxClockInfo", handle)
    return {
        NVML_CLOCK_SM: d.sm_clock_max_mhz,
        NVML_CLOCK_GRAPHICS: d.sm_clock_max_mhz,
        NVML_CLOCK_MEM: d.mem_clock_max_mhz,
    }[type]


def nvmlDeviceGetUtilizationRates(handle: FakeDevice) -> c_nvmlUtilization_t:
    d = _dev("nvmlDeviceGetUtilizationRates", handle)
    return c_nvmlUtilization_t(gpu=d.util_gpu, memory=d.util_mem)


def nvmlDeviceGetMemoryInfo(handle: FakeDevice, version: int | None = None) -> c_nvmlMemory_t:
    d = _dev("nvmlDeviceGetMemoryInfo", handle)
    return c_nvmlMemory_t(total=d.mem_total, free=d.mem_total - d.mem_used, used=d.mem_used)


def nvmlDeviceGetPowerUsage(handle: FakeDevice) -> int:
    return _dev("nvmlDeviceGetPowerUsage", handle).power_mw


def nvmlDeviceGetEnforcedPowerLimit(handle: FakeDevice) -> int:
    return _dev("nvmlDeviceGetEnforcedPowerLimit", handle).power_limit_mw


def nvmlDeviceGetPowerManagementDefaultLimit(handle: FakeDevice) -> int:
    return _dev("nvmlDeviceGetPowerManagementDefaultLimit", handle).power_default_limit_mw


nvmlTemperature_v1 = 0x100000C  # the real module's version tag for the V1 struct


def nvmlDeviceGetTemperatureV(
    handle: FakeDevice, sensor: int, version: int = nvmlTemperature_v1
) -> int:
    return _dev("nvmlDeviceGetTemperatureV", handle).temp_c


def nvmlDeviceGetTemperature(handle: FakeDevice, sensor: int) -> int:
    return _dev("nvmlDeviceGetTemperature", handle).temp_c


def nvmlDeviceGetMarginTemperature(handle: FakeDevice) -> int:
    d = _dev("nvmlDeviceGetMarginTemperature", handle)
    return d.slowdown_c - d.temp_c if d.margin_c is None else d.margin_c


def nvmlDeviceGetTemperatureThreshold(handle: FakeDevice, threshold: int) -> int:
    d = _dev("nvmlDeviceGetTemperatureThreshold", handle)
    values = {
        NVML_TEMPERATURE_THRESHOLD_SLOWDOWN: d.slowdown_c,
        NVML_TEMPERATURE_THRESHOLD_SHUTDOWN: d.shutdown_c,
        NVML_TEMPERATURE_THRESHOLD_GPU_MAX: d.gpu_max_c,
    }
    if threshold not in values:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return values[threshold]


def nvmlDeviceGetPerformanceState(handle: FakeDevice) -> int:
    return _dev("nvmlDeviceGetPerformanceState", handle).pstate


def nvmlDeviceGetCurrentClocksEventReasons(handle: FakeDevice) -> int:
    return _dev("nvmlDeviceGetCurrentClocksEventReasons", handle).clock_events


def nvmlDeviceGetCurrentClocksThrottleReasons(handle: FakeDevice) -> int:
    return _dev("nvmlDeviceGetCurrentClocksThrottleReasons", handle).clock_events


def _process_list(fname: str, handle: FakeDevice, kind: str) -> list[nvmlFriendlyObject]:
    d = _dev(fname, handle)
    return [
        nvmlFriendlyObject(
            {
                "pid": p.pid,
                "usedGpuMemory": p.used_bytes,
                "gpuInstanceId": 0xFFFFFFFF,
                "computeInstanceId": 0xFFFFFFFF,
            }
        )
        for p in d.processes
        if p.kind == kind
    ]


def nvmlDeviceGetComputeRunningProcesses(handle: FakeDevice) -> list[nvmlFriendlyObject]:
    return _process_list("nvmlDeviceGetComputeRunningProcesses", handle, "compute")


def nvmlDeviceGetGraphicsRunningProcesses(handle: FakeDevice) -> list[nvmlFriendlyObject]:
    return _process_list("nvmlDeviceGetGraphicsRunningProcesses", handle, "graphics")


def nvmlDeviceGetProcessUtilization(
    handle: FakeDevice,
    timeStamp: int,  # noqa: N803 - real name
) -> list[c_nvmlProcessUtilizationSample_t]:
    d = _dev("nvmlDeviceGetProcessUtilization", handle)
    d.util_samples_ts += 1
    samples = [
        c_nvmlProcessUtilizationSample_t(
            pid=p.pid, timeStamp=d.util_samples_ts, smUtil=p.sm_util, memUtil=p.mem_util
        )
        for p in d.processes
        if p.sm_util is not None
    ]
    if not samples:
        raise NVMLError(NVML_ERROR_NOT_FOUND)  # "no samples since timeStamp", as the driver says
    return samples


def nvmlDeviceGetTotalEnergyConsumption(handle: FakeDevice) -> int:
    return _dev("nvmlDeviceGetTotalEnergyConsumption", handle).energy_mj


def nvmlDeviceGetFieldValues(handle: FakeDevice, fieldIds: list[Any]) -> Any:  # noqa: N803
    d = _dev("nvmlDeviceGetFieldValues", handle)
    values = (c_nvmlFieldValue_t * len(fieldIds))()
    for i, fid in enumerate(fieldIds):
        fid = fid[0] if isinstance(fid, tuple) else fid
        values[i].fieldId = fid
        values[i].valueType = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
        if fid in d.unsupported_fields or fid not in d.throttle_ns:
            values[i].nvmlReturn = NVML_ERROR_NOT_SUPPORTED
        else:
            values[i].nvmlReturn = NVML_SUCCESS
            values[i].value.ullVal = d.throttle_ns[fid]
    return values
