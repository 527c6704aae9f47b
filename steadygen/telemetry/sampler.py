"""The sampler: a thread that reads GPUs and host into a bounded ring, and job windows.

    sampler = Sampler(interval_s=0.1)
    sampler.start()
    mark = sampler.begin_job(job_id)        # counters + processes at the start edge
    ...                                     # the job runs; samples accumulate
    window = sampler.end_job(mark)          # counters again; samples between the edges
    sampler.stop()

With ``interval_s == 0`` there is no thread, but job windows still carry counter deltas.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from steadygen.telemetry.alerts import Alerts
from steadygen.telemetry.counters import EdgeCounters, GpuCounters
from steadygen.telemetry.host import HostBackend
from steadygen.telemetry.nvml import GpuStaticInfo
from steadygen.telemetry.ownership import OwnGpuBytes, OwnProcessMatcher
from steadygen.telemetry.sample import GpuProcess, GpuReading, Sample, TelemetryUnavailable
from steadygen.telemetry.window import TelemetryWindow, in_window, merge_processes

log = logging.getLogger("steadygen.telemetry")

Listener = Callable[[Sample], None]


class GpuBackend(Protocol):
    """What the sampler needs from NvmlBackend or SmiBackend (and from test fakes)."""

    name: str
    periodic_processes: bool

    def read_gpus(self) -> list[GpuReading]: ...
    def read_processes(self, own_pids: set[int]) -> list[GpuProcess]: ...
    def read_counters(self) -> list[GpuCounters]: ...
    def static_info(self) -> list[GpuStaticInfo]: ...
    def close(self) -> None: ...


def open_gpu_backend(indices: list[int] | None = None,
                     interval_s: float = 0.1) -> tuple[GpuBackend | None, str]:
    """NVML, else a looping nvidia-smi, else None; with the reason when None."""
    from steadygen.telemetry.nvml import NvmlBackend

    try:
        return NvmlBackend(indices), ""
    except TelemetryUnavailable as exc:
        reason = str(exc)
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None, f"{reason}, and nvidia-smi is not on PATH"
    from steadygen.telemetry.smi import SmiBackend

    try:
        return SmiBackend(indices, interval_s=interval_s or 1.0, executable=exe), ""
    except TelemetryUnavailable as exc:
        return None, f"{reason}; {exc}"


@dataclass(frozen=True)
class JobMark:
    """The start edge of a job: pass it to ``Sampler.end_job``."""

    job_id: str
    t_start: float
    counters: EdgeCounters
    processes: list[GpuProcess] | None
    host_scans: int | None = None  # the host's foreign-process scans so far (None: unknown)


@dataclass(frozen=True)
class SamplerStats:
    ticks: int
    errors: int
    late_ticks: int  # ticks that started more than one interval late
    thread_cpu_s: float  # the sampler thread's own CPU time


class Sampler:
    """Reads a Sample every ``interval_s`` on its own thread into a bounded ring.

    ``interval_s=0``: no thread; ``begin_job``/``end_job`` still give counter deltas.
    ``own_pids``: GPU processes counted as ours (default: this process).
    ``own_gpu_bytes``: GPU index -> our allocator's reserved bytes; identifies our GPU
    process where NVML's pids are not ours (a container without the host's pid namespace;
    see ``ownership.py``).
    ``process_every_s``: GPU process lists and the foreign-CPU scan, at most this often.
    ``gpu_backend``/``host_backend``/``clock``: injected by tests and benchmarks.
    """

    def __init__(
        self,
        interval_s: float = 0.1,
        gpu_indices: list[int] | None = None,
        ring_size: int = 6_000,  # ten minutes at 10 Hz
        own_pids: set[int] | None = None,
        enable_gpu: bool = True,
        process_every_s: float = 1.0,
        alerts: Alerts | None = None,
        *,
        gpu_backend: GpuBackend | None = None,
        host_backend: HostBackend | None = None,
        clock: Callable[[], float] = time.monotonic,
        own_gpu_bytes: OwnGpuBytes | None = None,
    ):
        if interval_s < 0:
            raise ValueError(f"interval_s must be 0 (off) or positive (got {interval_s})")
        self.interval_s = interval_s
        self.own_pids = {os.getpid()} if own_pids is None else set(own_pids)
        self._owner = OwnProcessMatcher(self.own_pids, own_gpu_bytes)
        self.process_every_s = process_every_s
        self.alerts = alerts
        self._clock = clock
        self._ring: deque[Sample] = deque(maxlen=ring_size)
        self._lock = threading.Lock()
        # Held while one sample is read and recorded: a job's end edge waits for a tick
        # that began before it, so that sample is in the ring when the window is cut.
        self._tick_lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._last_processes: list[GpuProcess] | None = None
        self._last_proc_t = float("-inf")
        self._errors_logged: set[str] = set()
        self._ticks = self._errors = self._late = 0
        self._thread_cpu_s = 0.0
        self.host = host_backend or HostBackend(scan_every_s=process_every_s)
        self.gpu_status_reason = ""
        if gpu_backend is not None:
            self.gpu: GpuBackend | None = gpu_backend
        elif enable_gpu:
            self.gpu, self.gpu_status_reason = open_gpu_backend(gpu_indices, interval_s)
            if self.gpu is None:
                log.warning("no NVIDIA GPU telemetry: %s; host telemetry only",
                            self.gpu_status_reason)
        else:
            self.gpu, self.gpu_status_reason = None, "GPU telemetry turned off"

    @property
    def gpu_backend_name(self) -> str:
        """"nvml", "nvidia-smi" or "none"."""
        return "none" if self.gpu is None else self.gpu.name

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._closed:
            raise RuntimeError("a stopped Sampler cannot start again; make a new one")
        if self.interval_s == 0 or self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="steadygen-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, wait for it, and release the GPU backend (nvidia-smi is killed)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self.gpu is not None and not self._closed:
            self.gpu.close()
        self._closed = True

    def __enter__(self) -> Sampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(sample)`` from the sampler thread; returns an unsubscribe function."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    # -- reading --------------------------------------------------------------------------

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            self.tick()
            self._thread_cpu_s = time.thread_time()
            next_t += self.interval_s
            delay = next_t - time.monotonic()
            if delay < -self.interval_s:  # far behind: skip ticks rather than burst
                self._late += 1
                next_t = time.monotonic()
                delay = 0.0
            self._stop.wait(max(0.0, delay))

    def tick(self, scan_host: bool | None = None) -> Sample | None:
        """Read one sample into the ring (the thread calls this, a job's end edge may, and
        tests); ``scan_host`` as in ``read_sample``."""
        with self._tick_lock:
            try:
                sample = self.read_sample(scan_host)
            except Exception as exc:  # the thread must not die on a reading
                self._errors += 1
                key = type(exc).__name__
                if key not in self._errors_logged:
                    self._errors_logged.add(key)
                    log.exception("telemetry sample failed (logged once per error type)")
                return None
            self.record(sample)
        return sample

    def read_sample(self, scan_host: bool | None = None) -> Sample:
        """One sample; ``scan_host`` forces (True) the foreign-process scan, None when due."""
        t = self._clock()
        gpus = self._read_gpus()
        processes = None
        if self.gpu is not None and self.gpu.periodic_processes and (
                t - self._last_proc_t >= self.process_every_s):
            processes = self._read_processes()
            self._last_proc_t = t
        return Sample(t_mono=t, t_wall=time.time(), host=self.host.read_host(scan_host),
                      gpus=gpus, processes=processes)

    def _read_gpus(self) -> list[GpuReading]:
        return [] if self.gpu is None else self.gpu.read_gpus()

    def _read_processes(self) -> list[GpuProcess] | None:
        if self.gpu is None:
            return None
        procs = self._owner.mark(self.gpu.read_processes(self.own_pids))
        self._last_processes = procs
        return procs

    def record(self, sample: Sample) -> None:
        """Append a sample, feed the alerts and the listeners."""
        with self._lock:
            self._ring.append(sample)
            self._ticks += 1
            listeners = list(self._listeners)
        if self.alerts is not None:
            self.alerts.observe(sample)
        for listener in listeners:
            try:
                listener(sample)
            except Exception:
                self._errors += 1
                log.exception("telemetry listener failed")

    def latest(self) -> Sample | None:
        with self._lock:
            return self._ring[-1] if self._ring else None

    def latest_processes(self) -> list[GpuProcess] | None:
        """The most recent GPU process list (from a sample or a job edge)."""
        return self._last_processes

    def gauges(self) -> list[tuple[str, dict[str, str], float]]:
        """The latest sample's gauges, with GPU memory split by the latest process list."""
        sample = self.latest()
        return [] if sample is None else sample.gauges(self._last_processes)

    def samples_between(self, t0: float, t1: float) -> list[Sample]:
        """Samples with ``t0 <= t_mono < t1`` (the edge rule of ``in_window``), oldest first."""
        with self._lock:
            return [s for s in self._ring if in_window(s.t_mono, t0, t1)]

    def static_info(self) -> list[GpuStaticInfo]:
        return [] if self.gpu is None else self.gpu.static_info()

    def stats(self) -> SamplerStats:
        return SamplerStats(self._ticks, self._errors, self._late, self._thread_cpu_s)

    # -- job windows ----------------------------------------------------------------------

    def read_counters(self) -> EdgeCounters:
        gpus: list[GpuCounters] = []
        if self.gpu is not None:
            try:
                gpus = self.gpu.read_counters()
            except Exception:
                log.exception("GPU counters failed")
        return EdgeCounters(t_mono=self._clock(), host=self.host.read_counters(), gpus=gpus)

    def _host_scans(self) -> int | None:
        scans = getattr(self.host, "scans", None)
        return scans if isinstance(scans, int) else None

    def _edge_processes(self) -> list[GpuProcess] | None:
        try:
            return self._read_processes()
        except Exception:
            log.exception("GPU process list failed")
            return None

    def begin_job(self, job_id: str) -> JobMark:
        processes = self._edge_processes()
        counters = self.read_counters()
        return JobMark(job_id=job_id, t_start=counters.t_mono, counters=counters,
                       processes=processes, host_scans=self._host_scans())

    def end_job(self, mark: JobMark) -> TelemetryWindow:
        if (self.running and mark.host_scans is not None
                and self._host_scans() == mark.host_scans):
            # No scan of other processes ran during this job (one shorter than the scan
            # interval): one now measures their CPU since the last scan, which covers the
            # job, so a competitor started just before it is seen in its window. (A tick
            # holds the lock: host readings are never taken by two threads at once.)
            self.tick(scan_host=True)
        counters = self.read_counters()
        with self._tick_lock:  # a tick stamped before the edge is recorded before the cut
            pass
        processes = self._edge_processes()
        samples = self.samples_between(mark.t_start, counters.t_mono)
        seen = merge_processes([mark.processes, processes, *(s.processes for s in samples)])
        return TelemetryWindow(job_id=mark.job_id, t_start=mark.t_start, t_end=counters.t_mono,
                               samples=samples, start=mark.counters, end=counters,
                               processes=seen)


def sample_pair(enable_gpu: bool = True, settle_s: float = 0.5) -> tuple[Sample, Sample]:
    """Two samples ``settle_s`` apart (CPU shares and rates need an interval)."""
    sampler = Sampler(interval_s=0, enable_gpu=enable_gpu, process_every_s=settle_s)
    try:
        first = sampler.read_sample(scan_host=True)
        time.sleep(settle_s)
        second = sampler.read_sample(scan_host=True)
    finally:
        sampler.stop()
    return first, second


def sample_once(enable_gpu: bool = True, settle_s: float = 0.5) -> Sample:
    """One complete sample for ``steadygen monitor --once``."""
    return sample_pair(enable_gpu, settle_s)[1]
