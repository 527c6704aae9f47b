"""One telemetry reading: per-GPU fields, GPU processes and host fields, with units in names.

A field that the hardware, driver or kernel cannot give is ``None``: a missing reading is a
value, never an exception. ``Sample.gauges()`` turns a sample into Prometheus gauges in base
units (the server adds the ``steadygen_`` prefix); every metric has a fixed, low-cardinality
label set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from steadygen.errors import SteadygenError


class TelemetryUnavailable(SteadygenError):
    """A telemetry backend cannot start here (no NVML library, no driver, no nvidia-smi)."""


# Clock-event ("throttle") reason bits, as in nvml.h ``nvmlClocksEventReason*`` and
# ``nvidia-smi --query-gpu=clocks_event_reasons.active`` (a hex bitmask).
CLOCK_EVENT_REASONS: tuple[tuple[int, str], ...] = (
    (0x001, "gpu_idle"),
    (0x002, "applications_clocks"),
    (0x004, "sw_power_cap"),
    (0x008, "hw_slowdown"),
    (0x010, "sync_boost"),
    (0x020, "sw_thermal"),
    (0x040, "hw_thermal"),
    (0x080, "hw_power_brake"),
    (0x100, "display_clocks"),
)
REASON_NAMES: tuple[str, ...] = tuple(name for _, name in CLOCK_EVENT_REASONS)
REASON_BITS: dict[str, int] = {name: bit for bit, name in CLOCK_EVENT_REASONS}

# Reasons that have a cumulative time counter (nvml.h NVML_FI_DEV_CLOCKS_EVENT_REASON_*, ns).
COUNTED_REASONS: tuple[str, ...] = (
    "sw_power_cap",
    "sync_boost",
    "sw_thermal",
    "hw_thermal",
    "hw_power_brake",
)


def decode_reasons(mask: int | None) -> tuple[str, ...]:
    """Names of the set bits of a clock-event bitmask; () for None or 0."""
    if not mask:
        return ()
    return tuple(name for bit, name in CLOCK_EVENT_REASONS if mask & bit)


@dataclass(frozen=True, slots=True)
class GpuReading:
    """The cheap scalars of one GPU, polled at 10-20 Hz.

    nvidia-smi equivalent: ``--query-gpu=index,name,uuid,clocks.sm,clocks.max.sm,clocks.mem,
    clocks.max.mem,utilization.gpu,utilization.memory,power.draw,enforced.power.limit,
    temperature.gpu,temperature.gpu.tlimit,memory.used,memory.total,pstate,
    clocks_event_reasons.active``.
    """

    index: int
    name: str | None = None
    uuid: str | None = None
    sm_clock_hz: float | None = None
    sm_clock_max_hz: float | None = None
    mem_clock_hz: float | None = None
    mem_clock_max_hz: float | None = None
    util_gpu_pct: float | None = None  # % of the last 1/6 s..1 s with a kernel running
    util_mem_pct: float | None = None  # % of that period the memory was read or written
    power_w: float | None = None  # a 1 s average on Ampere and newer (except GA100)
    power_limit_w: float | None = None  # the enforced limit
    temp_c: float | None = None
    temp_margin_c: float | None = None  # degrees left before the slowdown threshold
    mem_used_bytes: int | None = None
    mem_total_bytes: int | None = None
    pstate: int | None = None  # 0 (P0, fastest) .. 15
    clock_event_mask: int | None = None

    @property
    def clock_events(self) -> tuple[str, ...]:
        """Active clock-event reasons by name, e.g. ("sw_power_cap",)."""
        return decode_reasons(self.clock_event_mask)

    @property
    def sm_clock_ratio(self) -> float | None:
        """Current over maximum SM clock (1.0 = at max)."""
        if self.sm_clock_hz is None or not self.sm_clock_max_hz:
            return None
        return self.sm_clock_hz / self.sm_clock_max_hz

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["clock_events"] = list(self.clock_events)
        return data


@dataclass(frozen=True, slots=True)
class GpuProcess:
    """A process holding a context on one GPU (``nvidia-smi --query-compute-apps``)."""

    gpu_index: int
    pid: int
    name: str | None
    used_bytes: int | None
    sm_util_pct: float | None  # nvmlDeviceGetProcessUtilization smUtil; None: no sample
    ours: bool
    kind: Literal["compute", "graphics"]
    mem_util_pct: float | None = None  # the same sample's memUtil (memory traffic share)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ForeignCpuProcess:
    """A process other than ours and its CPU share since the previous scan."""

    pid: int
    name: str
    cpu_pct: float  # percent of one CPU, as top shows it (200 = two cores busy)
    cpu_affinity: tuple[int, ...] | None = None  # the CPUs it may run on; None: unknown


@dataclass(frozen=True, slots=True)
class PsiReading:
    """One line pair of /proc/pressure/<resource>: share of time some/all tasks stalled."""

    some_avg10_pct: float
    some_total_us: int
    full_avg10_pct: float | None = None
    full_total_us: int | None = None


@dataclass(frozen=True, slots=True)
class HostReading:
    """Our process and the host around it."""

    cpu_seconds: float | None = None  # our process, user + system
    rss_bytes: int | None = None
    num_threads: int | None = None
    run_delay_ns: int | None = None  # our threads' run-queue wait, cumulative (schedstat)
    cpu_util_pct: float | None = None  # whole host, since the previous reading
    cpu_count: int | None = None  # the host's CPUs
    cpu_affinity: tuple[int, ...] | None = None  # the CPUs our process may run on
    load_avg: tuple[float, float, float] | None = None
    cpu_freq_mhz: float | None = None
    mem_available_bytes: int | None = None
    swap_used_bytes: int | None = None
    psi_cpu: PsiReading | None = None
    psi_memory: PsiReading | None = None
    psi_io: PsiReading | None = None
    top_foreign: tuple[ForeignCpuProcess, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Gauge = tuple[str, dict[str, str], float]  # (metric suffix, labels, value)


def _gauge(out: list[Gauge], name: str, labels: dict[str, str], value: float | None) -> None:
    if value is not None:
        out.append((name, labels, float(value)))


@dataclass(frozen=True, slots=True)
class Sample:
    """One telemetry reading. ``processes`` is None when not read at this tick (~1 Hz)."""

    t_mono: float  # time.monotonic()
    t_wall: float  # time.time()
    host: HostReading
    gpus: list[GpuReading] = field(default_factory=list)
    processes: list[GpuProcess] | None = None

    def gpu(self, index: int) -> GpuReading | None:
        """The reading of the GPU with this device index, if any."""
        return next((g for g in self.gpus if g.index == index), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "t_mono": self.t_mono,
            "t_wall": self.t_wall,
            "host": self.host.to_dict(),
            "gpus": [g.to_dict() for g in self.gpus],
            "processes": None
            if self.processes is None
            else [p.to_dict() for p in self.processes],
        }

    def gauges(self, processes: list[GpuProcess] | None = None) -> list[Gauge]:
        """(metric suffix, labels, value) in Prometheus base units.

        ``processes`` is used when this sample has none (pass the latest known list) to
        split GPU memory into ours and others'.
        """
        procs = self.processes if self.processes is not None else processes
        out: list[Gauge] = []
        for g in self.gpus:
            _gpu_gauges(out, g, procs)
        _host_gauges(out, self.host)
        return out


def _gpu_gauges(out: list[Gauge], g: GpuReading, procs: list[GpuProcess] | None) -> None:
    lab = {"gpu": str(g.index)}
    _gauge(out, "gpu_sm_clock_hertz", lab, g.sm_clock_hz)
    _gauge(out, "gpu_sm_clock_max_hertz", lab, g.sm_clock_max_hz)
    _gauge(out, "gpu_memory_clock_hertz", lab, g.mem_clock_hz)
    _gauge(out, "gpu_utilization_ratio", lab, _ratio(g.util_gpu_pct))
    _gauge(out, "gpu_memory_utilization_ratio", lab, _ratio(g.util_mem_pct))
    _gauge(out, "gpu_power_watts", lab, g.power_w)
    _gauge(out, "gpu_power_limit_watts", lab, g.power_limit_w)
    _gauge(out, "gpu_temperature_celsius", lab, g.temp_c)
    _gauge(out, "gpu_temperature_margin_celsius", lab, g.temp_margin_c)
    _gauge(out, "gpu_memory_total_bytes", lab, g.mem_total_bytes)
    if g.mem_used_bytes is not None and procs is not None:
        ours = sum(p.used_bytes or 0 for p in procs if p.gpu_index == g.index and p.ours)
        _gauge(out, "gpu_memory_used_bytes", {**lab, "owner": "ours"}, ours)
        _gauge(out, "gpu_memory_used_bytes", {**lab, "owner": "others"},
               max(0, g.mem_used_bytes - ours))
    if g.clock_event_mask is not None:
        for bit, name in CLOCK_EVENT_REASONS:
            active = 1.0 if g.clock_event_mask & bit else 0.0
            out.append(("gpu_clock_event_active", {**lab, "reason": name}, active))


def _host_gauges(out: list[Gauge], h: HostReading) -> None:
    _gauge(out, "host_cpu_utilization_ratio", {}, _ratio(h.cpu_util_pct))
    _gauge(out, "host_process_cpu_seconds_total", {}, h.cpu_seconds)
    _gauge(out, "host_process_resident_memory_bytes", {}, h.rss_bytes)
    _gauge(out, "host_process_threads", {}, h.num_threads)
    if h.run_delay_ns is not None:
        _gauge(out, "host_run_queue_delay_seconds_total", {}, h.run_delay_ns / 1e9)
    if h.load_avg is not None:
        _gauge(out, "host_load1", {}, h.load_avg[0])
    _gauge(out, "host_cpu_frequency_hertz", {},
           None if h.cpu_freq_mhz is None else h.cpu_freq_mhz * 1e6)
    _gauge(out, "host_memory_available_bytes", {}, h.mem_available_bytes)
    _gauge(out, "host_swap_used_bytes", {}, h.swap_used_bytes)
    for res, psi in (("cpu", h.psi_cpu), ("memory", h.psi_memory), ("io", h.psi_io)):
        if psi is not None:
            _gauge(out, f"host_pressure_{res}_some_ratio", {}, psi.some_avg10_pct / 100)
            _gauge(out, f"host_pressure_{res}_some_seconds_total", {},
                   psi.some_total_us / 1e6)


def _ratio(pct: float | None) -> float | None:
    return None if pct is None else pct / 100.0
