"""``steadygen monitor``: a live GPU and host view in the spirit of ``nvidia-smi dmon``.

Yellow marks a value worth a look, red one that slows generation (or soon will): a clock
held below max while busy, a hot GPU, a hardware slowdown reason, memory nearly full, a
foreign process on the GPU, CPU pressure. Run-queue delay is measured on this monitor's own
threads: a probe for how long a runnable thread waits for a CPU on this host right now.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from steadygen.telemetry import Alerts, GpuProcess, GpuReading, HostReading, Sample, Sampler
from steadygen.telemetry.sampler import sample_pair

GIB = float(1 << 30)
NORMAL_REASONS = {"gpu_idle"}  # no slowdown of ours
SOFT_REASONS = {"sw_power_cap", "applications_clocks", "sync_boost", "display_clocks"}


def run_monitor(
    interval_s: float,
    once: bool,
    as_json: bool,
    console: Console | None = None,
    queue_depth: Callable[[], int | None] | None = None,
    gpu_indices: list[int] | None = None,
) -> int:
    """Show telemetry every ``interval_s`` until Ctrl-C; ``once`` prints one view and returns.

    ``as_json`` prints ``Sample.to_dict()`` as JSON (one line per sample when live).
    """
    console = console or Console()
    if interval_s <= 0:
        console.print(f"[red]--interval must be positive (got {interval_s}); try 0.5[/red]")
        return 2
    if once:
        with _quiet_backend_choice():
            prev, cur = sample_pair(settle_s=min(max(interval_s, 0.2), 1.0))
        if as_json:
            console.out(json.dumps(cur.to_dict()), highlight=False)
        else:
            note = "" if cur.gpus else "no NVIDIA GPU telemetry here; host only"
            console.print(render(prev, cur, note, _depth(queue_depth)))
        return 0
    return _run_live(interval_s, as_json, console, queue_depth, gpu_indices)


def _run_live(interval_s: float, as_json: bool, console: Console,
              queue_depth: Callable[[], int | None] | None,
              gpu_indices: list[int] | None) -> int:
    alerts = Alerts()
    with _quiet_backend_choice():
        sampler = Sampler(interval_s=interval_s, gpu_indices=gpu_indices, alerts=alerts)
    note = "" if sampler.gpu is not None else (
        f"no NVIDIA GPU telemetry: {sampler.gpu_status_reason}; host only")
    sampler.start()
    prev: Sample | None = None
    try:
        if as_json:
            while True:
                time.sleep(interval_s)
                cur = sampler.latest()
                if cur is not None and cur is not prev:
                    console.out(json.dumps(cur.to_dict()), highlight=False)
                    prev = cur
        with Live(Text("waiting for the first sample..."), console=console,
                  auto_refresh=False) as live:
            while True:
                time.sleep(max(interval_s, 0.25))
                cur = sampler.latest()
                if cur is None:
                    continue
                live.update(render(prev, cur, note, _depth(queue_depth), alerts.messages(),
                                   sampler.latest_processes()), refresh=True)
                prev = cur
    except KeyboardInterrupt:
        return 0
    finally:
        sampler.stop()


@contextlib.contextmanager
def _quiet_backend_choice() -> Iterator[None]:
    """The view itself says when there is no GPU; no second line for it in the log."""
    logger = logging.getLogger("steadygen.telemetry")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _depth(queue_depth: Callable[[], int | None] | None) -> int | None:
    try:
        return None if queue_depth is None else queue_depth()
    except Exception:
        return None


def render(prev: Sample | None, cur: Sample, note: str = "", queue: int | None = None,
           alerts: list[str] | None = None,
           processes: list[GpuProcess] | None = None) -> RenderableType:
    """One screen: GPUs, GPU processes, host, alerts."""
    parts: list[RenderableType] = []
    if cur.gpus:
        parts.append(_gpu_table(cur.gpus))
    else:
        parts.append(Text(note or "no NVIDIA GPU telemetry; host only", style="yellow"))
    procs = cur.processes if cur.processes is not None else processes
    if procs:
        parts.append(_process_table(procs))
    parts.append(_host_table(prev, cur.host, cur.t_mono, queue))
    for message in alerts or ():
        parts.append(Text(f"alert: {message}", style="bold red"))
    return Group(*parts)


def _cell(text: str, level: int) -> Text:
    return Text(text, style=("", "yellow", "bold red")[level])


def _level(value: float | None, warn: float, bad: float) -> int:
    if value is None:
        return 0
    return 2 if value >= bad else 1 if value >= warn else 0


def _fmt(value: float | None, scale: float = 1.0, digits: int = 0) -> str:
    return "-" if value is None else f"{value / scale:.{digits}f}"


def _gpu_table(gpus: list[GpuReading]) -> Table:
    t = Table(title="GPU", title_justify="left", box=None, header_style="bold")
    for col in ("gpu", "name", "sm MHz", "mem MHz", "util%", "mem%", "power W",
                "temp C", "memory GiB", "P", "clock events"):
        t.add_column(col, justify="left" if col in ("name", "clock events") else "right")
    for g in gpus:
        ratio = g.sm_clock_ratio
        busy_low = (ratio is not None and ratio < 0.9 and (g.util_gpu_pct or 0) > 80)
        sm = _cell(f"{_fmt(g.sm_clock_hz, 1e6)}/{_fmt(g.sm_clock_max_hz, 1e6)}", int(busy_low))
        power_level = 0
        if g.power_w is not None and g.power_limit_w:
            power_level = int(g.power_w >= 0.97 * g.power_limit_w)
        power = _cell(f"{_fmt(g.power_w)}/{_fmt(g.power_limit_w)}", power_level)
        temp_level = max(_level(g.temp_c, 75, 85),
                         _level(None if g.temp_margin_c is None else -g.temp_margin_c, -10, -3))
        temp = _cell(f"{_fmt(g.temp_c)} ({_fmt(g.temp_margin_c)})", temp_level)
        mem_level = 0
        if g.mem_used_bytes is not None and g.mem_total_bytes:
            mem_level = _level(g.mem_used_bytes / g.mem_total_bytes, 0.9, 0.97)
        mem = _cell(f"{_fmt(g.mem_used_bytes, GIB, 1)}/{_fmt(g.mem_total_bytes, GIB, 1)}",
                    mem_level)
        events = Text()
        for name in g.clock_events:
            style = "dim" if name in NORMAL_REASONS else (
                "yellow" if name in SOFT_REASONS else "bold red")
            events.append(name + " ", style=style)
        t.add_row(str(g.index), g.name or "-", sm, _fmt(g.mem_clock_hz, 1e6),
                  _fmt(g.util_gpu_pct), _fmt(g.util_mem_pct), power, temp, mem,
                  "-" if g.pstate is None else f"P{g.pstate}", events)
    return t


def _process_table(procs: list[GpuProcess]) -> Table:
    t = Table(title="GPU processes", title_justify="left", box=None, header_style="bold")
    for col in ("gpu", "pid", "name", "kind", "memory GiB", "sm%", "owner"):
        t.add_column(col)
    for p in procs:
        style = "" if p.ours else "yellow"
        t.add_row(str(p.gpu_index), str(p.pid), p.name or "?", p.kind,
                  _fmt(p.used_bytes, GIB, 2), _fmt(p.sm_util_pct),
                  "ours" if p.ours else "foreign", style=style)
    return t


def _host_table(prev: Sample | None, h: HostReading, t_mono: float,
                queue: int | None) -> Table:
    t = Table(title="host", title_justify="left", box=None, header_style="bold",
              show_header=False)
    t.add_column("what")
    t.add_column("value")
    t.add_row("CPU", _cell(f"{_fmt(h.cpu_util_pct)} % of {h.cpu_count or '?'} CPUs"
                           + (f" at {h.cpu_freq_mhz:.0f} MHz" if h.cpu_freq_mhz else ""),
                           _level(h.cpu_util_pct, 85, 97)))
    if h.load_avg is not None:
        per_cpu = h.load_avg[0] / (h.cpu_count or 1)
        t.add_row("load", _cell(" ".join(f"{v:.2f}" for v in h.load_avg), _level(per_cpu, 1, 2)))
    rate = _run_delay_rate_ms(prev, h, t_mono)
    t.add_row("run-queue delay", _cell("-" if rate is None else f"{rate:.1f} ms/s",
                                       _level(rate, 20, 100)))
    psi = [(name, p) for name, p in (("cpu", h.psi_cpu), ("mem", h.psi_memory), ("io", h.psi_io))
           if p is not None]
    if psi:
        line = Text()
        for name, p in psi:
            line.append(f"{name} {p.some_avg10_pct:.1f}%  ",
                        style=("", "yellow", "bold red")[_level(p.some_avg10_pct, 5, 20)])
        t.add_row("pressure (some, 10 s)", line)
    swap_level = int(bool(h.swap_used_bytes))
    t.add_row("memory", _cell(f"{_fmt(h.mem_available_bytes, GIB, 1)} GiB available, swap "
                              f"{_fmt(h.swap_used_bytes, GIB, 1)} GiB used", swap_level))
    if h.top_foreign:
        busy = ", ".join(f"{p.name}({p.pid}) {p.cpu_pct:.0f}%" for p in h.top_foreign)
        t.add_row("top other processes", _cell(busy, _level(h.top_foreign[0].cpu_pct, 50, 90)))
    if queue is not None:
        t.add_row("our queue", str(queue))
    return t


def _run_delay_rate_ms(prev: Sample | None, h: HostReading, t_mono: float) -> float | None:
    """Milliseconds of run-queue wait per second of wall time since the previous sample."""
    if prev is None or h.run_delay_ns is None or prev.host.run_delay_ns is None:
        return None
    dt = t_mono - prev.t_mono
    if dt <= 0:
        return None
    return (h.run_delay_ns - prev.host.run_delay_ns) / 1e6 / dt
