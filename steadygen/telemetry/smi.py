"""GPU readings from ``nvidia-smi`` when NVML cannot be loaded from Python.

One long-running ``nvidia-smi --query-gpu=... --format=csv,nounits -lms <ms>`` process is read
by a thread; nothing is spawned per sample. The CSV is parsed by header names, never by
position: the header may carry units (``clocks.current.sm [MHz]``), name a field by its long
alias (``clocks.sm`` is printed as ``clocks.current.sm``), and values may be ``[N/A]`` or
``[Not Supported]`` (None here). NVIDIA does not promise nvidia-smi's output stays the same;
NVML is the first choice.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import re
import subprocess
import threading
import time
from typing import Any

from steadygen.telemetry.counters import GpuCounters
from steadygen.telemetry.nvml import GpuStaticInfo
from steadygen.telemetry.sample import REASON_BITS, GpuProcess, GpuReading, TelemetryUnavailable

log = logging.getLogger("steadygen.telemetry")

BASE_FIELDS = (
    "index", "uuid", "name", "pstate", "utilization.gpu", "utilization.memory",
    "clocks.sm", "clocks.max.sm", "clocks.mem", "clocks.max.mem", "power.draw",
    "enforced.power.limit", "temperature.gpu", "memory.used", "memory.total",
)
# Tried in order; a driver that does not know a field fails the whole query.
OPTIONAL_FIELDS = (
    ("clocks_event_reasons.active", "clocks_throttle_reasons.active"),
    ("temperature.gpu.tlimit",),
)
# Short aliases -> the name nvidia-smi prints in the header.
ALIASES = {
    "clocks.sm": "clocks.current.sm",
    "clocks.mem": "clocks.current.memory",
    "clocks.gr": "clocks.current.graphics",
    "clocks.max.mem": "clocks.max.memory",
    "clocks.max.gr": "clocks.max.graphics",
    "clocks_throttle_reasons.active": "clocks_event_reasons.active",
    "gpu_name": "name",
    "gpu_uuid": "uuid",
    "used_memory": "used_gpu_memory",
}
# Per-reason columns ("Active" / "Not Active") -> our reason names.
REASON_COLUMNS = {
    "gpu_idle": "gpu_idle",
    "applications_clocks_setting": "applications_clocks",
    "sw_power_cap": "sw_power_cap",
    "hw_slowdown": "hw_slowdown",
    "sync_boost": "sync_boost",
    "sw_thermal_slowdown": "sw_thermal",
    "hw_thermal_slowdown": "hw_thermal",
    "hw_power_brake_slowdown": "hw_power_brake",
    "display_clock_setting": "display_clocks",
}
APPS_EVERY_S = 5.0  # nvidia-smi --query-compute-apps at most this often
_REASON_GROUPS = ("clocks_event_reasons", "clocks_throttle_reasons")
_NUMBER = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*([A-Za-z%]*)\s*$")
_SCALE = {"mhz": 1e6, "ghz": 1e9, "mib": float(1 << 20), "gib": float(1 << 30),
          "kib": 1024.0, "b": 1.0, "w": 1.0, "mw": 1e-3, "%": 1.0, "c": 1.0, "": 1.0}


def _key(header_cell: str) -> tuple[str, str]:
    """``"clocks.current.sm [MHz]"`` -> ``("clocks.current.sm", "MHz")``."""
    name, _, unit = header_cell.strip().partition("[")
    name = name.strip().lower()
    return ALIASES.get(name, name), unit.rstrip("]").strip()


def _number(raw: str, header_unit: str) -> float | None:
    """A value in base units of its kind (Hz, bytes, W, %, °C); None when not available."""
    raw = raw.strip()
    if not raw or raw.startswith("[") or raw.upper() in ("N/A", "-"):
        return None
    m = _NUMBER.match(raw)
    if m is None:
        return None
    unit = (m.group(2) or header_unit).lower()
    return float(m.group(1)) * _SCALE.get(unit, 1.0)


def _row_to_reading(row: dict[str, tuple[str, str]]) -> GpuReading | None:
    def num(key: str) -> float | None:
        cell = row.get(key)
        return None if cell is None else _number(*cell)

    def text(key: str) -> str | None:
        cell = row.get(key)
        value = None if cell is None else cell[0].strip()
        return None if not value or value.startswith("[") else value

    index = num("index")
    if index is None:
        return None
    mem_used, mem_total = num("memory.used"), num("memory.total")
    pstate = text("pstate")
    return GpuReading(
        index=int(index),
        name=text("name"),
        uuid=text("uuid"),
        sm_clock_hz=num("clocks.current.sm"),
        sm_clock_max_hz=num("clocks.max.sm"),
        mem_clock_hz=num("clocks.current.memory"),
        mem_clock_max_hz=num("clocks.max.memory"),
        util_gpu_pct=num("utilization.gpu"),
        util_mem_pct=num("utilization.memory"),
        power_w=num("power.draw"),
        power_limit_w=num("enforced.power.limit"),
        temp_c=num("temperature.gpu"),
        temp_margin_c=num("temperature.gpu.tlimit"),
        mem_used_bytes=None if mem_used is None else int(mem_used),
        mem_total_bytes=None if mem_total is None else int(mem_total),
        pstate=int(pstate[1:]) if pstate and pstate[1:].isdigit() else None,
        clock_event_mask=_reason_mask(row),
    )


def _reason_mask(row: dict[str, tuple[str, str]]) -> int | None:
    cell = row.get("clocks_event_reasons.active")
    if cell is not None:
        raw = cell[0].strip()
        try:
            return int(raw, 16) if raw.lower().startswith("0x") else int(raw)
        except ValueError:
            return None
    mask, seen = 0, False
    for key, (raw, _) in row.items():
        group, _, reason = key.partition(".")
        if group in _REASON_GROUPS and reason in REASON_COLUMNS:
            seen = True
            if raw.strip().lower() == "active":
                mask |= REASON_BITS[REASON_COLUMNS[reason]]
    return mask if seen else None


class SmiCsvParser:
    """Stateful line parser: a header line sets the columns, later lines are rows."""

    def __init__(self) -> None:
        self.columns: list[tuple[str, str]] | None = None

    def feed(self, line: str) -> GpuReading | None:
        if not line.strip():
            return None
        cells = next(csv.reader(io.StringIO(line), skipinitialspace=True))
        keys = [_key(c) for c in cells]
        if any(k == "index" for k, _ in keys):  # a (repeated) header line
            self.columns = keys
            return None
        if self.columns is None or len(cells) != len(self.columns):
            return None
        row = {k: (v, unit) for (k, unit), v in zip(self.columns, cells, strict=True)}
        return _row_to_reading(row)


def parse_smi_csv(text: str) -> list[GpuReading]:
    """Readings from ``nvidia-smi --query-gpu=... --format=csv[,nounits]`` output (with header)."""
    parser = SmiCsvParser()
    return [r for line in text.splitlines() if (r := parser.feed(line)) is not None]


def parse_smi_apps_csv(text: str, uuid_to_index: dict[str, int],
                       own_pids: set[int]) -> list[GpuProcess]:
    """``--query-compute-apps=pid,process_name,used_memory,gpu_uuid --format=csv,nounits``."""
    rows = list(csv.reader(io.StringIO(text), skipinitialspace=True))
    if not rows:
        return []
    keys = [_key(c) for c in rows[0]]
    out: list[GpuProcess] = []
    for cells in rows[1:]:
        if len(cells) != len(keys):
            continue
        row = {k: (v, unit) for (k, unit), v in zip(keys, cells, strict=True)}
        pid = _number(*row.get("pid", ("", "")))
        index = uuid_to_index.get(row.get("uuid", ("", ""))[0].strip())
        if pid is None or index is None:
            continue
        used = _number(*row.get("used_gpu_memory", ("", "")))
        name = row.get("process_name", ("", ""))[0].strip() or None
        out.append(GpuProcess(
            gpu_index=index, pid=int(pid), name=name,
            used_bytes=None if used is None else int(used), sm_util_pct=None,
            ours=int(pid) in own_pids, kind="compute",
        ))
    return out


class SmiBackend:
    """GPU readings from one looping nvidia-smi process. No energy or throttle counters."""

    name = "nvidia-smi"
    periodic_processes = True  # cheap: read_processes returns a list refreshed off-thread

    def __init__(self, indices: list[int] | None = None, interval_s: float = 0.1,
                 executable: str = "nvidia-smi"):
        self._exe = executable
        self._select = [] if indices is None else ["-i", ",".join(str(i) for i in indices)]
        self._fields, first = self._probe()
        self._latest: dict[int, GpuReading] = {r.index: r for r in first}
        self._latest_t = time.monotonic()
        self._stale_s = max(2.0, 5 * interval_s)
        self._lock = threading.Lock()
        self._apps_text = ""
        self._apps_t = float("-inf")
        self._apps_busy = False
        ms = max(10, round(interval_s * 1000))
        cmd = [self._exe, f"--query-gpu={','.join(self._fields)}", "--format=csv,nounits",
               "-lms", str(ms), *self._select]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      text=True, bufsize=1)
        self._thread = threading.Thread(target=self._read_loop, name="steadygen-nvidia-smi",
                                        daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _run_once(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self._exe, *args, *self._select], capture_output=True,
                              text=True, timeout=15, check=False)

    def _probe(self) -> tuple[list[str], list[GpuReading]]:
        """The largest field list this driver accepts, and one reading from it."""
        error = "no output"
        for extra in itertools.product(*[(*alts, None) for alts in OPTIONAL_FIELDS]):
            fields = [*BASE_FIELDS, *(f for f in extra if f is not None)]
            try:
                done = self._run_once([f"--query-gpu={','.join(fields)}", "--format=csv,nounits"])
            except (OSError, subprocess.SubprocessError) as exc:
                raise TelemetryUnavailable(f"nvidia-smi cannot run: {exc}") from exc
            readings = parse_smi_csv(done.stdout) if done.returncode == 0 else []
            if readings:
                return fields, readings
            lines = (done.stdout + done.stderr).strip().splitlines()
            error = lines[-1] if lines else f"exit code {done.returncode}"
        raise TelemetryUnavailable(f"nvidia-smi --query-gpu failed: {error}")

    def _read_loop(self) -> None:
        parser = SmiCsvParser()
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            reading = parser.feed(line)
            if reading is not None:
                with self._lock:
                    self._latest[reading.index] = reading
                    self._latest_t = time.monotonic()
        if self._proc.poll() not in (None, -9, -15):
            log.warning("nvidia-smi exited (code %s); GPU readings stop", self._proc.returncode)

    def read_gpus(self) -> list[GpuReading]:
        with self._lock:
            if time.monotonic() - self._latest_t > self._stale_s:
                return []
            return [self._latest[i] for i in sorted(self._latest)]

    def read_processes(self, own_pids: set[int]) -> list[GpuProcess]:
        """The last process list, refreshed in the background at most every 5 s.

        Each refresh is a new nvidia-smi (tens of ms, and a visible stutter on some desktop
        GPUs), so it never runs on the caller's thread.
        """
        now = time.monotonic()
        with self._lock:
            due = not self._apps_busy and now - self._apps_t >= APPS_EVERY_S
            if due:
                self._apps_busy = True
            uuids = {r.uuid: r.index for r in self._latest.values() if r.uuid}
            text = self._apps_text
        if due:
            threading.Thread(target=self._refresh_apps, name="steadygen-nvidia-smi-apps",
                             daemon=True).start()
        return parse_smi_apps_csv(text, uuids, own_pids)

    def _refresh_apps(self) -> None:
        text = None
        try:
            done = self._run_once(["--query-compute-apps=pid,process_name,used_memory,gpu_uuid",
                                   "--format=csv,nounits"])
            text = done.stdout if done.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            pass
        with self._lock:
            if text is not None:
                self._apps_text = text
            self._apps_t = time.monotonic()
            self._apps_busy = False

    def read_counters(self) -> list[GpuCounters]:
        with self._lock:
            return [GpuCounters(index=i) for i in sorted(self._latest)]

    def static_info(self) -> list[GpuStaticInfo]:
        with self._lock:
            readings = [self._latest[i] for i in sorted(self._latest)]
        return [_static_from(r) for r in readings]

    def close(self) -> None:
        """Stop the looping nvidia-smi (by its pid) and the reader thread."""
        if self._proc.poll() is None:
            self._proc.kill()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - kill does not fail like this
            log.warning("nvidia-smi (pid %d) did not exit", self._proc.pid)
        if self._proc.stdout is not None:
            self._thread.join(timeout=5)
            self._proc.stdout.close()


def _static_from(r: GpuReading) -> GpuStaticInfo:
    fields: dict[str, Any] = dict.fromkeys(GpuStaticInfo.__dataclass_fields__)
    fields.update(index=r.index, name=r.name, uuid=r.uuid, sm_clock_max_hz=r.sm_clock_max_hz,
                  mem_clock_max_hz=r.mem_clock_max_hz, power_limit_w=r.power_limit_w)
    return GpuStaticInfo(**fields)
