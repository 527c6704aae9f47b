"""GPU and host telemetry: readings, a sampler thread, job windows and alerts.

Backends: ``nvml.py`` (the only importer of pynvml), ``smi.py`` (a looping nvidia-smi when
NVML cannot load), ``host.py`` (psutil and /proc). Nothing here imports torch, and importing
this package does no work.
"""

from steadygen.telemetry.alerts import ALERT_KINDS, Alerts, AlertThresholds
from steadygen.telemetry.counters import (
    CounterDeltas,
    EdgeCounters,
    GpuCounters,
    GpuDeltas,
    HostCounters,
)
from steadygen.telemetry.nvml import GpuStaticInfo
from steadygen.telemetry.sample import (
    CLOCK_EVENT_REASONS,
    COUNTED_REASONS,
    REASON_NAMES,
    ForeignCpuProcess,
    GpuProcess,
    GpuReading,
    HostReading,
    PsiReading,
    Sample,
    TelemetryUnavailable,
    decode_reasons,
)
from steadygen.telemetry.sampler import (
    GpuBackend,
    JobMark,
    Sampler,
    SamplerStats,
    open_gpu_backend,
    sample_once,
    sample_pair,
)
from steadygen.telemetry.window import TelemetryWindow

__all__ = [
    "ALERT_KINDS",
    "CLOCK_EVENT_REASONS",
    "COUNTED_REASONS",
    "REASON_NAMES",
    "AlertThresholds",
    "Alerts",
    "CounterDeltas",
    "EdgeCounters",
    "ForeignCpuProcess",
    "GpuCounters",
    "GpuBackend",
    "GpuDeltas",
    "GpuProcess",
    "GpuReading",
    "GpuStaticInfo",
    "HostCounters",
    "HostReading",
    "JobMark",
    "PsiReading",
    "Sample",
    "Sampler",
    "SamplerStats",
    "TelemetryUnavailable",
    "TelemetryWindow",
    "decode_reasons",
    "open_gpu_backend",
    "sample_once",
    "sample_pair",
]
