"""GPU readings through NVML (``nvidia-ml-py``, module ``pynvml``): the only module that imports it.

Every call goes through ``_call``: an NVMLError costs one field, never the reading. A function
that answers "not supported" (or is missing from the library) is remembered per device and
not asked again, so a 10 Hz poll does not retry it ten times a second.

Costs (research/telemetry.md 1.4): clocks, utilization, memory, power, temperature and
clock-event reasons are cheap driver reads, fine at 10-20 Hz; process lists cost
milliseconds and are read at ~1 Hz or at job edges.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass
from typing import Any, Literal

import psutil

from steadygen.telemetry.counters import GpuCounters
from steadygen.telemetry.sample import GpuProcess, GpuReading, TelemetryUnavailable

log = logging.getLogger("steadygen.telemetry")

# Errors that mean "this device will never answer this call": cache them.
_PERMANENT = ("NotSupported", "FunctionNotFound", "NoPermission", "InvalidArgument")

# reason name -> (field id constant, its value in nvml.h API 13, for older bindings)
_THROTTLE_FIELDS = {
    "sw_power_cap": ("NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_POWER_CAP", 74),
    "sync_boost": ("NVML_FI_DEV_CLOCKS_EVENT_REASON_SYNC_BOOST", 76),
    "sw_thermal": ("NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN", 269),
    "hw_thermal": ("NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN", 270),
    "hw_power_brake": ("NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN", 271),
}
_PSTATE_UNKNOWN = 32
_PROCESS_LISTS: tuple[tuple[Literal["compute", "graphics"], str], ...] = (
    ("compute", "nvmlDeviceGetComputeRunningProcesses"),
    ("graphics", "nvmlDeviceGetGraphicsRunningProcesses"),
)


@dataclass(frozen=True)
class GpuStaticInfo:
    """What does not change while the driver is loaded; for the doctor and the records.

    nvidia-smi: ``--query-gpu=index,name,uuid,driver_version,clocks.max.sm,clocks.max.mem,
    power.default_limit,enforced.power.limit,persistence_mode`` and ``nvidia-smi -q -d
    TEMPERATURE`` for the thresholds.
    """

    index: int
    name: str | None
    uuid: str | None
    driver_version: str | None
    cuda_driver_version: int | None  # e.g. 12040 for CUDA 12.4
    sm_clock_max_hz: float | None
    mem_clock_max_hz: float | None
    power_default_limit_w: float | None
    power_limit_w: float | None
    persistence_mode: bool | None
    slowdown_temp_c: float | None
    shutdown_temp_c: float | None
    gpu_max_temp_c: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class NvmlBackend:
    """Reads GPUs through NVML. Raises TelemetryUnavailable when NVML cannot start."""

    name = "nvml"
    periodic_processes = True  # process lists are cheap enough for ~1 Hz

    def __init__(self, indices: list[int] | None = None):
        try:
            import pynvml
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise TelemetryUnavailable(f"nvidia-ml-py is not installed ({exc})") from exc
        self._nv: Any = pynvml
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as exc:
            raise TelemetryUnavailable(f"NVML cannot start: {exc}") from exc
        wanted = list(range(count)) if indices is None else list(indices)
        bad = [i for i in wanted if not 0 <= i < count]
        if bad:
            pynvml.nvmlShutdown()
            raise TelemetryUnavailable(
                f"GPU index {bad} does not exist; this machine has {count} GPU(s)"
            )
        self._handles = {i: pynvml.nvmlDeviceGetHandleByIndex(i) for i in wanted}
        self._unsupported: set[tuple[str, int]] = set()
        self._logged: set[tuple[str, int, str]] = set()
        self._proc_util_ts: dict[int, int] = {}
        self._names: dict[int, str | None] = {}
        self._static = {i: self._read_static(i) for i in wanted}

    @property
    def indices(self) -> list[int]:
        return list(self._handles)

    def close(self) -> None:
        with contextlib.suppress(self._nv.NVMLError):
            self._nv.nvmlShutdown()

    # -- the one wrapper ------------------------------------------------------------------

    def _call(self, index: int, fname: str, *args: Any) -> Any:
        """``pynvml.<fname>(handle, *args)``, or None when it fails."""
        key = (fname + repr(args), index)  # clock SM and clock MEM are cached apart
        if key in self._unsupported:
            return None
        fn = getattr(self._nv, fname, None)
        if fn is None:
            self._unsupported.add(key)
            return None
        try:
            return fn(self._handles[index], *args)
        except self._nv.NVMLError as exc:
            kind = type(exc).__name__.removeprefix("NVMLError_")
            if kind in _PERMANENT:
                self._unsupported.add(key)
            elif (fname, index, kind) not in self._logged:
                self._logged.add((fname, index, kind))
                log.warning("NVML %s on GPU %d failed: %s", fname, index, exc)
            return None

    def _first(self, index: int, *calls: tuple[Any, ...]) -> Any:
        """The first of several (fname, *args) calls that answers."""
        for fname, *args in calls:
            value = self._call(index, fname, *args)
            if value is not None:
                return value
        return None

    # -- static ---------------------------------------------------------------------------

    def _read_static(self, i: int) -> GpuStaticInfo:
        nv = self._nv
        try:
            driver = _text(nv.nvmlSystemGetDriverVersion())
        except nv.NVMLError:
            driver = None
        try:
            cuda = int(nv.nvmlSystemGetCudaDriverVersion())
        except nv.NVMLError:
            cuda = None
        persistence = self._call(i, "nvmlDeviceGetPersistenceMode")
        return GpuStaticInfo(
            index=i,
            name=_text(self._call(i, "nvmlDeviceGetName")),
            uuid=_text(self._call(i, "nvmlDeviceGetUUID")),
            driver_version=driver,
            cuda_driver_version=cuda,
            sm_clock_max_hz=_mhz(self._call(i, "nvmlDeviceGetMaxClockInfo", nv.NVML_CLOCK_SM)),
            mem_clock_max_hz=_mhz(self._call(i, "nvmlDeviceGetMaxClockInfo", nv.NVML_CLOCK_MEM)),
            power_default_limit_w=_mw(self._call(i, "nvmlDeviceGetPowerManagementDefaultLimit")),
            power_limit_w=_mw(self._call(i, "nvmlDeviceGetEnforcedPowerLimit")),
            persistence_mode=None
            if persistence is None
            else persistence == nv.NVML_FEATURE_ENABLED,
            slowdown_temp_c=self._threshold(i, "NVML_TEMPERATURE_THRESHOLD_SLOWDOWN"),
            shutdown_temp_c=self._threshold(i, "NVML_TEMPERATURE_THRESHOLD_SHUTDOWN"),
            gpu_max_temp_c=self._threshold(i, "NVML_TEMPERATURE_THRESHOLD_GPU_MAX"),
        )

    def _threshold(self, i: int, const: str) -> float | None:
        which = getattr(self._nv, const, None)
        if which is None:
            return None
        value = self._call(i, "nvmlDeviceGetTemperatureThreshold", which)
        return None if value is None else float(value)

    def static_info(self) -> list[GpuStaticInfo]:
        return list(self._static.values())

    # -- polled ---------------------------------------------------------------------------

    def read_gpus(self) -> list[GpuReading]:
        return [self._read_gpu(i) for i in self._handles]

    def _read_gpu(self, i: int) -> GpuReading:
        nv, st = self._nv, self._static[i]
        util = self._call(i, "nvmlDeviceGetUtilizationRates")
        mem = self._call(i, "nvmlDeviceGetMemoryInfo")
        temp = self._first(
            i,
            ("nvmlDeviceGetTemperatureV", nv.NVML_TEMPERATURE_GPU),
            ("nvmlDeviceGetTemperature", nv.NVML_TEMPERATURE_GPU),
        )
        margin = self._call(i, "nvmlDeviceGetMarginTemperature")
        if margin is None and temp is not None and st.slowdown_temp_c is not None:
            margin = st.slowdown_temp_c - temp
        pstate = self._call(i, "nvmlDeviceGetPerformanceState")
        return GpuReading(
            index=i,
            name=st.name,
            uuid=st.uuid,
            sm_clock_hz=_mhz(self._call(i, "nvmlDeviceGetClockInfo", nv.NVML_CLOCK_SM)),
            sm_clock_max_hz=st.sm_clock_max_hz,
            mem_clock_hz=_mhz(self._call(i, "nvmlDeviceGetClockInfo", nv.NVML_CLOCK_MEM)),
            mem_clock_max_hz=st.mem_clock_max_hz,
            util_gpu_pct=None if util is None else float(util.gpu),
            util_mem_pct=None if util is None else float(util.memory),
            power_w=_mw(self._call(i, "nvmlDeviceGetPowerUsage")),
            power_limit_w=_mw(self._call(i, "nvmlDeviceGetEnforcedPowerLimit")),
            temp_c=None if temp is None else float(temp),
            temp_margin_c=None if margin is None else float(margin),
            mem_used_bytes=None if mem is None else int(mem.used),
            mem_total_bytes=None if mem is None else int(mem.total),
            pstate=None if pstate is None or pstate >= _PSTATE_UNKNOWN else int(pstate),
            clock_event_mask=self._first(
                i,
                ("nvmlDeviceGetCurrentClocksEventReasons",),
                ("nvmlDeviceGetCurrentClocksThrottleReasons",),
            ),
        )

    # -- processes ------------------------------------------------------------------------

    def read_processes(self, own_pids: set[int]) -> list[GpuProcess]:
        """Compute and graphics processes on every GPU (``nvidia-smi --query-compute-apps``).

        In a container without the host's pid namespace NVML reports host pids: names are
        then None and our own process is not recognised.
        """
        out: list[GpuProcess] = []
        for i in self._handles:
            utils = self._process_util(i)
            seen: set[int] = set()
            for kind, fname in _PROCESS_LISTS:
                for info in self._call(i, fname) or ():
                    pid = int(info.pid)
                    if pid in seen:
                        continue
                    seen.add(pid)
                    used = info.usedGpuMemory
                    out.append(GpuProcess(
                        gpu_index=i, pid=pid, name=self._process_name(pid),
                        used_bytes=None if used is None else int(used),
                        sm_util_pct=None if utils is None else utils.get(pid, (0.0, 0.0))[0],
                        mem_util_pct=None if utils is None else utils.get(pid, (0.0, 0.0))[1],
                        ours=pid in own_pids, kind=kind,
                    ))
        return out

    def _process_util(self, i: int) -> dict[int, tuple[float, float]] | None:
        """Per-process (SM %, memory %) since the previous call (``nvidia-smi pmon -s u``):
        the largest of the samples the driver kept for each pid. The driver lists only
        processes with non-zero utilisation, so a pid absent from an answer was idle; None
        when the call is not available here (MIG, older GPUs, no permission)."""
        key = ("nvmlDeviceGetProcessUtilization()", i)
        if key in self._unsupported or not hasattr(self._nv, "nvmlDeviceGetProcessUtilization"):
            return None
        last = self._proc_util_ts.get(i, 0)
        try:
            samples = self._nv.nvmlDeviceGetProcessUtilization(self._handles[i], last)
        except self._nv.NVMLError as exc:
            kind = type(exc).__name__.removeprefix("NVMLError_")
            if kind == "NotFound":  # no process had non-zero utilisation since `last`
                return {}
            if kind in _PERMANENT:
                self._unsupported.add(key)
            return None
        util: dict[int, tuple[float, float]] = {}
        for s in samples:
            sm, mem = util.get(int(s.pid), (0.0, 0.0))
            util[int(s.pid)] = (max(sm, float(s.smUtil)), max(mem, float(s.memUtil)))
            self._proc_util_ts[i] = max(self._proc_util_ts.get(i, 0), int(s.timeStamp))
        return util

    def _process_name(self, pid: int) -> str | None:
        try:
            return str(psutil.Process(pid).name())
        except (psutil.Error, OSError):
            return None

    # -- counters at job edges ------------------------------------------------------------

    def read_counters(self) -> list[GpuCounters]:
        return [
            GpuCounters(
                index=i,
                energy_mj=self._call(i, "nvmlDeviceGetTotalEnergyConsumption"),
                throttle_ns=self._throttle_ns(i),
            )
            for i in self._handles
        ]

    def _throttle_ns(self, i: int) -> dict[str, int]:
        wanted = {
            reason: getattr(self._nv, const, default)
            for reason, (const, default) in _THROTTLE_FIELDS.items()
            if (f"field:{reason}", i) not in self._unsupported
        }
        if not wanted:
            return {}
        values = self._call(i, "nvmlDeviceGetFieldValues", list(wanted.values()))
        if values is None:
            return {}
        out: dict[str, int] = {}
        for reason, fv in zip(wanted, values, strict=False):
            if fv.nvmlReturn == self._nv.NVML_SUCCESS:
                out[reason] = int(fv.value.ullVal)
            else:
                self._unsupported.add((f"field:{reason}", i))
        return out


def _mhz(value: Any) -> float | None:
    return None if value is None else float(value) * 1e6


def _mw(value: Any) -> float | None:
    return None if value is None else float(value) / 1000.0


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)

