"""Host readings: our process, CPU contention (run-queue delay, PSI) and foreign CPU consumers.

Linux sources: ``/proc/<pid>/task/<tid>/schedstat`` (field 2: ns spent waiting on a run
queue, needs CONFIG_SCHED_INFO) and ``/proc/pressure/{cpu,memory,io}`` (PSI, kernel >= 4.20,
may be disabled with ``psi=0``). Either may be missing: the field is then None.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import psutil

from steadygen.telemetry.counters import HostCounters
from steadygen.telemetry.sample import ForeignCpuProcess, HostReading, PsiReading

PSI_RESOURCES = ("cpu", "memory", "io")
T = TypeVar("T")
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def read_psi(resource: str, root: Path = Path("/proc/pressure")) -> PsiReading | None:
    """Parse ``/proc/pressure/<resource>``; None where PSI is absent."""
    try:
        text = (root / resource).read_text()
    except OSError:
        return None
    return parse_psi(text)


def parse_psi(text: str) -> PsiReading | None:
    """``some avg10=0.12 avg60=0.05 avg300=0.01 total=12345`` (+ an optional ``full`` line)."""
    lines: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        lines[kind] = dict(item.split("=", 1) for item in rest.split() if "=" in item)
    some = lines.get("some")
    if not some:
        return None
    full = lines.get("full")
    return PsiReading(
        some_avg10_pct=float(some["avg10"]),
        some_total_us=int(some["total"]),
        full_avg10_pct=float(full["avg10"]) if full else None,
        full_total_us=int(full["total"]) if full else None,
    )


@dataclass(frozen=True)
class MemInfo:
    available_bytes: int | None
    swap_used_bytes: int | None


def read_meminfo(path: Path = Path("/proc/meminfo")) -> MemInfo:
    """MemAvailable and SwapTotal - SwapFree from one read (psutil as the fallback)."""
    try:
        kb = {}
        for line in path.read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemAvailable", "SwapTotal", "SwapFree"):
                kb[key] = int(rest.split()[0])
        return MemInfo(available_bytes=kb["MemAvailable"] * 1024,
                       swap_used_bytes=(kb["SwapTotal"] - kb["SwapFree"]) * 1024)
    except (OSError, KeyError, IndexError, ValueError):
        vm = _safe(psutil.virtual_memory)
        swap = _safe(psutil.swap_memory)
        return MemInfo(available_bytes=None if vm is None else vm.available,
                       swap_used_bytes=None if swap is None else swap.used)


@dataclass(frozen=True)
class _OwnStat:
    cpu_seconds: float | None
    rss_bytes: int | None
    num_threads: int | None


class RunDelayCounter:
    """Our threads' summed run-queue delay (ns), kept monotonic across thread exits.

    A thread's schedstat disappears when it exits, so the live sum can fall; the last value
    seen for each exited thread is kept. Delay a thread accrued after our last read and
    before its exit is lost (bounded by one sampling interval).
    """

    def __init__(self, pid: int):
        self._dir = Path(f"/proc/{pid}/task")
        self._last: dict[str, int] = {}
        self._exited_ns = 0
        self._lock = threading.Lock()

    def read_ns(self) -> int | None:
        current: dict[str, int] = {}
        try:
            tids = os.listdir(self._dir)
        except OSError:
            return None
        for tid in tids:
            try:
                fields = (self._dir / tid / "schedstat").read_text().split()
                current[tid] = int(fields[1])
            except (OSError, IndexError, ValueError):
                continue
        if not current:
            return None
        with self._lock:
            for tid, ns in self._last.items():
                if tid not in current:
                    self._exited_ns += ns
            self._last = current
            return self._exited_ns + sum(current.values())


class HostBackend:
    """Reads HostReading at every sample and HostCounters at job edges.

    The scan of foreign processes (every process but ours) is the expensive part: it runs at
    most every ``scan_every_s`` and samples in between repeat its last result. CPU shares
    are over the interval since the previous scan (``psutil.Process.cpu_percent``, whose
    baseline lives in the Process objects we keep between scans).
    """

    def __init__(self, pid: int | None = None, scan_every_s: float = 1.0, top_n: int = 8):
        self.pid = os.getpid() if pid is None else pid
        self._proc = psutil.Process(self.pid)
        self._stat_path = Path(f"/proc/{self.pid}/stat")
        self._cpu_count = psutil.cpu_count()
        self._run_delay = RunDelayCounter(self.pid)
        self._scan_every_s = scan_every_s
        self._top_n = top_n
        self._known: dict[int, psutil.Process] = {}
        self._top: tuple[ForeignCpuProcess, ...] = ()
        self._last_scan = float("-inf")
        self.scans = 0  # foreign-process scans so far (job edges check one ran)
        self._cpu_freq_ok = True
        self._freq_mhz: float | None = None
        psutil.cpu_percent(interval=None)  # baseline for the first reading

    def read_host(self, scan: bool | None = None) -> HostReading:
        """``scan``: True forces a foreign-process scan, None scans when one is due."""
        now = time.monotonic()
        if scan or (scan is None and now - self._last_scan >= self._scan_every_s):
            self._top = self._scan_foreign()
            self._freq_mhz = self._cpu_freq()
            self._last_scan = now
            self.scans += 1
        own = self._own_stat()
        mem = read_meminfo()
        return HostReading(
            cpu_seconds=own.cpu_seconds,
            rss_bytes=own.rss_bytes,
            num_threads=own.num_threads,
            run_delay_ns=self._run_delay.read_ns(),
            cpu_util_pct=psutil.cpu_percent(interval=None),
            cpu_count=self._cpu_count,
            cpu_affinity=_affinity(self.pid),
            load_avg=_safe(os.getloadavg),
            cpu_freq_mhz=self._freq_mhz,
            mem_available_bytes=mem.available_bytes,
            swap_used_bytes=mem.swap_used_bytes,
            psi_cpu=read_psi("cpu"),
            psi_memory=read_psi("memory"),
            psi_io=read_psi("io"),
            top_foreign=self._top,
        )

    def _own_stat(self) -> _OwnStat:
        """One read of /proc/<pid>/stat (psutil needs three files for the same)."""
        try:
            text = self._stat_path.read_text()
            f = text.rsplit(")", 1)[1].split()  # f[0] is field 3 (state) of proc(5)
            return _OwnStat(
                cpu_seconds=(int(f[11]) + int(f[12])) / _CLK_TCK,
                num_threads=int(f[17]),
                rss_bytes=int(f[21]) * _PAGE_SIZE,
            )
        except (OSError, IndexError, ValueError):
            pass
        with self._proc.oneshot():
            times = _safe(self._proc.cpu_times)
            mem = _safe(self._proc.memory_info)
            threads = _safe(self._proc.num_threads)
        return _OwnStat(
            cpu_seconds=None if times is None else times.user + times.system,
            rss_bytes=None if mem is None else mem.rss,
            num_threads=threads,
        )

    def read_counters(self) -> HostCounters:
        with self._proc.oneshot():
            times = _safe(self._proc.cpu_times)
            ctx = _safe(self._proc.num_ctx_switches)
        psi = {r: p.some_total_us for r in PSI_RESOURCES if (p := read_psi(r)) is not None}
        return HostCounters(
            cpu_seconds=None if times is None else times.user + times.system,
            run_delay_ns=self._run_delay.read_ns(),
            psi_some_total_us=psi,
            ctx_voluntary=None if ctx is None else ctx.voluntary,
            ctx_involuntary=None if ctx is None else ctx.involuntary,
        )

    def _scan_foreign(self) -> tuple[ForeignCpuProcess, ...]:
        alive: dict[int, psutil.Process] = {}
        found: list[ForeignCpuProcess] = []
        for pid in psutil.pids():
            if pid == self.pid:
                continue
            proc = self._known.get(pid)
            try:
                if proc is None:
                    # First sight: its share over its life so far (a burner started a moment
                    # ago shows at once); later scans give the share since the previous one.
                    proc = psutil.Process(pid)
                    proc.cpu_percent(interval=None)  # the baseline for the next scan
                    pct = _lifetime_cpu_pct(proc)
                else:
                    pct = proc.cpu_percent(interval=None)
                alive[pid] = proc
                if pct > 0:
                    found.append(ForeignCpuProcess(pid=pid, name=proc.name(), cpu_pct=pct))
            except (psutil.Error, OSError):
                continue
        self._known = alive
        found.sort(key=lambda p: p.cpu_pct, reverse=True)
        # Where the top few may run: a process pinned to other CPUs cannot take ours.
        return tuple(replace(p, cpu_affinity=_affinity(p.pid))
                     for p in found[: self._top_n])

    def _cpu_freq(self) -> float | None:
        if not self._cpu_freq_ok:
            return None
        try:
            freq = psutil.cpu_freq()
        except (OSError, NotImplementedError, AttributeError):
            freq = None
        if freq is None or not freq.current:
            self._cpu_freq_ok = False
            return None
        return float(freq.current)


def _safe(fn: Callable[[], T]) -> T | None:
    try:
        return fn()
    except (psutil.Error, OSError):
        return None


def _affinity(pid: int) -> tuple[int, ...] | None:
    """The CPUs ``pid`` may run on (``taskset -p PID``); None where it cannot be read."""
    try:
        return tuple(sorted(os.sched_getaffinity(pid)))
    except (OSError, AttributeError):
        return None


def _lifetime_cpu_pct(proc: psutil.Process) -> float:
    """CPU time over wall time since the process started, in percent of one CPU."""
    times = proc.cpu_times()
    age = time.time() - proc.create_time()
    return 100.0 * (times.user + times.system) / age if age > 0.05 else 0.0
