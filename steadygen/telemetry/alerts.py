"""Alerts as episodes: one warning when a condition starts, silence while it lasts.

Kinds (fixed, for a metric label): ``gpu_temperature`` (over a threshold), ``foreign_gpu_process``
(a process not ours appears on a GPU we use), ``clocks_below_max`` (busy but the SM clock held
under 90 % of max for more than 2 s), ``allocator_fragmentation`` (reported by the engine).
``SwPowerCap`` at full load is normal GPU Boost behaviour, so clocks-below-max is a hint, not
a fault.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable
from dataclasses import dataclass

from steadygen.telemetry.sample import GpuReading, Sample

log = logging.getLogger("steadygen.telemetry")

ALERT_KINDS = (
    "gpu_temperature",
    "foreign_gpu_process",
    "clocks_below_max",
    "allocator_fragmentation",
)


@dataclass(frozen=True)
class AlertThresholds:
    temp_c: float = 75.0
    temp_clear_c: float = 3.0  # the episode ends this far below the threshold
    busy_util_pct: float = 80.0
    low_clock_ratio: float = 0.9
    low_clock_for_s: float = 2.0
    fragmentation: float = 0.30


class Alerts:
    """Feed it samples (``observe``) and fragmentation ratios; read counts and active kinds."""

    def __init__(self, thresholds: AlertThresholds | None = None):
        self.thresholds = thresholds or AlertThresholds()
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(ALERT_KINDS, 0)
        self._active: dict[tuple[str, Hashable], str] = {}  # (kind, subject) -> message
        self._low_since: dict[int, float] = {}  # gpu -> t_mono the low-clock condition began

    def counts(self) -> dict[str, int]:
        """Episodes started so far, per kind (all kinds present)."""
        with self._lock:
            return dict(self._counts)

    def active(self) -> list[str]:
        """Kinds with an episode going on now."""
        with self._lock:
            return sorted({kind for kind, _ in self._active})

    def messages(self) -> list[str]:
        """One line per active episode."""
        with self._lock:
            return list(self._active.values())

    def observe(self, sample: Sample) -> None:
        with self._lock:
            for g in sample.gpus:
                self._temperature(g)
                self._low_clocks(g, sample.t_mono)
            if sample.processes is not None:
                self._foreign(sample)

    def observe_fragmentation(self, ratio: float) -> None:
        """Allocator fragmentation from the engine: 1 - allocated / reserved, say."""
        limit = self.thresholds.fragmentation
        with self._lock:
            self._set("allocator_fragmentation", None, ratio > limit,
                      f"allocator fragmentation {ratio:.0%} over {limit:.0%}")

    # -- conditions ---------------------------------------------------------------------

    def _temperature(self, g: GpuReading) -> None:
        if g.temp_c is None:
            return
        th = self.thresholds
        key = ("gpu_temperature", g.index)
        on = g.temp_c > th.temp_c if key not in self._active else (
            g.temp_c > th.temp_c - th.temp_clear_c)
        self._set("gpu_temperature", g.index, on,
                  f"GPU {g.index} at {g.temp_c:.0f} C, over {th.temp_c:.0f} C")

    def _low_clocks(self, g: GpuReading, t: float) -> None:
        th = self.thresholds
        ratio = g.sm_clock_ratio
        low = (ratio is not None and g.util_gpu_pct is not None
               and g.util_gpu_pct > th.busy_util_pct and ratio < th.low_clock_ratio)
        if not low:
            self._low_since.pop(g.index, None)
            self._set("clocks_below_max", g.index, False, "")
            return
        since = self._low_since.setdefault(g.index, t)
        if t - since > th.low_clock_for_s:
            reasons = ", ".join(g.clock_events) or "no reason given"
            self._set("clocks_below_max", g.index, True,
                      f"GPU {g.index} busy at {ratio:.0%} of max SM clock for "
                      f"{t - since:.1f} s ({reasons})")

    def _foreign(self, sample: Sample) -> None:
        assert sample.processes is not None
        ours = {p.gpu_index for p in sample.processes if p.ours}
        gpus = ours or {g.index for g in sample.gpus}
        present = {(p.gpu_index, p.pid): p for p in sample.processes
                   if not p.ours and p.gpu_index in gpus}
        for key in [k for k in self._active if k[0] == "foreign_gpu_process"]:
            if key[1] not in present:
                del self._active[key]
        for subject, p in present.items():
            used = "" if p.used_bytes is None else f" using {p.used_bytes / 2**30:.1f} GiB"
            self._set("foreign_gpu_process", subject, True,
                      f"foreign process {p.pid} ({p.name or '?'}) on GPU {p.gpu_index}{used}")

    def _set(self, kind: str, subject: Hashable, on: bool, message: str) -> None:
        key = (kind, subject)
        if not on:
            self._active.pop(key, None)
            return
        if key not in self._active:
            self._counts[kind] += 1
            log.warning("alert %s: %s", kind, message)
        self._active[key] = message
