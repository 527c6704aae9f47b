"""``steadygen doctor``: machine checks that explain jitter before it happens.

Each check has a status (ok, warn, fail, skip), what it saw, and the exact command that
would fix it. The doctor never changes a hardware setting itself: it prints the command.
It exits non-zero when a check fails.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from steadygen.config import Settings

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
GIB = float(2**30)
MIN_DRIVER = 535  # CUDA 12.2 drivers; older ones lack clock-event counters
TEMP_MARGIN_WARN_C = 10.0
IDLE_UTIL_PCT = 5.0


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


# -- software -----------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _parse(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split("+")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def software_checks(settings: Settings) -> list[Check]:
    checks = []
    torch_v, diffusers_v = _version("torch"), _version("diffusers")
    checks.append(Check("torch", OK if torch_v else FAIL, f"torch {torch_v or 'not installed'}",
                        "" if torch_v else "pip install torch"))
    if diffusers_v is None:
        checks.append(Check("diffusers", FAIL, "diffusers not installed", "pip install -e ."))
    elif _parse(diffusers_v) < (0, 36):
        checks.append(Check("diffusers", FAIL, f"diffusers {diffusers_v} has no ZImagePipeline",
                            "pip install 'diffusers>=0.39'"))
    elif _parse(diffusers_v) < (0, 39):
        checks.append(Check(
            "diffusers", WARN,
            f"diffusers {diffusers_v}: Turbo needs 9 steps here (one wasted forward) and "
            "<0.38 syncs the host every step", "pip install 'diffusers>=0.39'"))
    else:
        checks.append(Check("diffusers", OK, f"diffusers {diffusers_v}: Turbo runs 8 steps"))
    alloc = os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF")
    if alloc is None:
        checks.append(Check("PYTORCH_CUDA_ALLOC_CONF", OK,
                            "unset: steadygen sets expandable_segments:True at start"))
    elif "expandable_segments:True" in alloc:
        checks.append(Check("PYTORCH_CUDA_ALLOC_CONF", OK, alloc))
    else:
        checks.append(Check(
            "PYTORCH_CUDA_ALLOC_CONF", WARN,
            f"{alloc}: without expandable segments, new shapes fragment the cache",
            "export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        checks.append(Check("CUDA_VISIBLE_DEVICES", WARN,
                            f"{visible!r} hides every GPU from this process",
                            "unset CUDA_VISIBLE_DEVICES"))
    else:
        checks.append(Check("CUDA_VISIBLE_DEVICES", OK,
                            "unset (all GPUs visible)" if visible is None else visible))
    flash3 = importlib.util.find_spec("flash_attn_interface") is not None
    checks.append(Check(
        "attention backends", OK,
        "SDPA; PyTorch flash and cuDNN SDPA on CUDA"
        + ("; FlashAttention-3 installed" if flash3 else "; FlashAttention-3 not installed")))
    checks.append(Check(
        "engine options", OK,
        f"attention={settings.attention}, compile={settings.compile}, fp8={settings.fp8}, "
        f"vae_tiling={settings.vae_tiling}, prompt cache={settings.prompt_cache_size}, "
        f"memory={settings.memory}, cuda_graphs={settings.cuda_graphs}, "
        f"exact_length_prompts={settings.exact_length_prompts}, "
        f"vae_decode={settings.vae_decode}, "
        f"empty cache per request={settings.empty_cache_per_request}"))
    if settings.empty_cache_per_request:
        checks.append(Check(
            "per-request cache emptying", WARN,
            "on: every job gives GPU memory back and the next one pays to get it again",
            "unset STEADYGEN_EMPTY_CACHE_PER_REQUEST"))
    return checks


# -- GPU ----------------------------------------------------------------------------------


def open_backend() -> tuple[Any, str]:
    from steadygen.telemetry.nvml import NvmlBackend
    from steadygen.telemetry.sample import TelemetryUnavailable

    try:
        return NvmlBackend(), ""
    except TelemetryUnavailable as exc:
        return None, str(exc)


def gpu_checks(backend: Any, settings: Settings, why_absent: str = "") -> list[Check]:
    if backend is None:
        has_dev = Path("/dev/nvidiactl").exists()
        status = FAIL if has_dev else SKIP
        detail = f"NVML does not load ({why_absent or 'no NVIDIA driver'})"
        fix = "install the NVIDIA driver (nvidia-smi must run)" if has_dev else ""
        return [Check("NVML", status, detail + ("" if has_dev else "; GPU checks skipped"), fix)]
    checks = [Check("NVML", OK, "loads")]
    statics = backend.static_info()
    readings = {g.index: g for g in backend.read_gpus()}
    processes = backend.read_processes({os.getpid()})
    for info in statics:
        i = info.index
        g = readings.get(i)
        tag = f"GPU {i}"
        drv = info.driver_version or "?"
        major = _parse(drv)[0] if info.driver_version else 0
        checks.append(Check(f"{tag} driver", OK if major >= MIN_DRIVER else WARN,
                            f"{info.name}, driver {drv}",
                            "" if major >= MIN_DRIVER else "upgrade the NVIDIA driver to 535+"))
        if info.persistence_mode is False:
            checks.append(Check(
                f"{tag} persistence mode", WARN,
                "off: the driver tears down between clients, so first calls are slow",
                f"sudo nvidia-smi -i {i} -pm 1"))
        elif info.persistence_mode:
            checks.append(Check(f"{tag} persistence mode", OK, "on"))
        checks.append(_memory_mode_check(tag, g, settings))
        checks += _clock_checks(tag, i, info, g)
        checks += _power_temp_checks(tag, i, info, g, settings)
        checks += _process_checks(tag, i, g, [p for p in processes if p.gpu_index == i])
    return checks


MODE_ORDER = {"low": 0, "balanced": 1, "high": 2}


def _memory_mode_check(tag: str, g: Any, settings: Settings) -> Check:
    """The memory mode this card's memory suits, against the one configured."""
    from steadygen.engine.memory import recommend

    total = None if g is None else g.mem_total_bytes
    if total is None:
        return Check(f"{tag} memory mode", SKIP, "total memory not readable")
    mode, why = recommend(total)
    asked = settings.memory
    if asked in ("auto", mode):
        return Check(f"{tag} memory mode", OK,
                     f"{mode}" + (" (auto picks it)" if asked == "auto" else "") + f": {why}")
    if MODE_ORDER[asked] > MODE_ORDER[mode]:
        return Check(f"{tag} memory mode", WARN,
                     f"memory={asked} may not fit {total / GIB:.0f} GiB; {mode} suits it: {why}",
                     f"steadygen serve --memory {mode}  # or STEADYGEN_MEMORY={mode}")
    return Check(f"{tag} memory mode", OK,
                 f"memory={asked} keeps less on the GPU than {total / GIB:.0f} GiB allows; "
                 f"{mode} would move fewer weights")


def _clock_checks(tag: str, i: int, info: Any, g: Any) -> list[Check]:
    if g is None or g.sm_clock_hz is None or not info.sm_clock_max_hz:
        return [Check(f"{tag} clocks", SKIP, "SM clock not readable")]
    cur, top = g.sm_clock_hz / 1e6, info.sm_clock_max_hz / 1e6
    idle = g.util_gpu_pct is not None and g.util_gpu_pct < IDLE_UTIL_PCT
    reasons = set(g.clock_events)
    if "applications_clocks" in reasons or (idle and cur >= 0.98 * top):
        return [Check(
            f"{tag} clocks", WARN,
            f"SM {cur:.0f} of {top:.0f} MHz while idle: clocks look locked or pinned "
            "(application clocks); fine for benchmarks, not for power",
            f"sudo nvidia-smi -i {i} -rgc && sudo nvidia-smi -i {i} -rac")]
    hw = reasons & {"hw_slowdown", "hw_thermal", "hw_power_brake", "sw_thermal"}
    if hw:
        return [Check(f"{tag} clocks", FAIL,
                      f"SM {cur:.0f} of {top:.0f} MHz, slowed by {', '.join(sorted(hw))}",
                      f"nvidia-smi -i {i} -q -d PERFORMANCE,TEMPERATURE,POWER")]
    return [Check(f"{tag} clocks", OK,
                  f"SM {cur:.0f} MHz now, {top:.0f} MHz max" + (" (idle)" if idle else ""))]


def _power_temp_checks(tag: str, i: int, info: Any, g: Any, settings: Settings) -> list[Check]:
    out = []
    limit, default = info.power_limit_w, info.power_default_limit_w
    if limit and default and limit < 0.95 * default:
        out.append(Check(f"{tag} power limit", WARN,
                         f"{limit:.0f} W, below the default {default:.0f} W: clocks drop sooner",
                         f"sudo nvidia-smi -i {i} -pl {default:.0f}"))
    elif limit:
        out.append(Check(f"{tag} power limit", OK,
                         f"{limit:.0f} W" + (f" (default {default:.0f} W)" if default else "")))
    if g is not None and g.temp_c is not None:
        margin = g.temp_margin_c
        hot = g.temp_c >= settings.temp_alert_c or (margin is not None and
                                                    margin < TEMP_MARGIN_WARN_C)
        detail = f"{g.temp_c:.0f} C" + (f", {margin:.0f} C to slowdown" if margin is not None
                                        else "")
        out.append(Check(f"{tag} temperature", WARN if hot else OK, detail,
                         f"nvidia-smi -i {i} -q -d TEMPERATURE  # then check airflow and fans"
                         if hot else ""))
    return out


def _process_checks(tag: str, i: int, g: Any, procs: list[Any]) -> list[Check]:
    foreign = [p for p in procs if not p.ours]
    if not foreign:
        return [Check(f"{tag} other processes", OK, "none")]
    names = ", ".join(
        f"{p.name or '?'} (pid {p.pid}, {((p.used_bytes or 0) / GIB):.1f} GiB)" for p in foreign
    )
    pids = " ".join(str(p.pid) for p in foreign)
    idle = g is not None and g.util_gpu_pct is not None and g.util_gpu_pct < IDLE_UTIL_PCT
    held = sum(p.used_bytes or 0 for p in foreign)
    if idle and held > GIB:
        return [Check(
            f"{tag} other processes", WARN,
            f"the GPU looks idle but {held / GIB:.1f} GiB is held by: {names}",
            f"kill {pids}  # or stop those programs")]
    return [Check(f"{tag} other processes", WARN, f"sharing the GPU with: {names}",
                  f"kill {pids}  # or move them to another GPU")]


# -- host ---------------------------------------------------------------------------------


def host_checks(root: Path = Path("/")) -> list[Check]:
    checks = []
    governors = sorted({
        p.read_text().strip()
        for p in (root / "sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_governor")
        if p.is_file()
    })
    if not governors:
        checks.append(Check("CPU governor", SKIP, "not readable here (a VM or container)"))
    elif governors != ["performance"]:
        checks.append(Check("CPU governor", WARN,
                            f"{', '.join(governors)}: the launch thread may run at low clocks",
                            "sudo cpupower frequency-set -g performance"))
    else:
        checks.append(Check("CPU governor", OK, "performance"))
    for resource, limit in (("cpu", 10.0), ("memory", 5.0), ("io", 20.0)):
        path = root / "proc/pressure" / resource
        try:
            first = path.read_text().splitlines()[0]
        except (OSError, IndexError):
            checks.append(Check(f"{resource} pressure", SKIP, "PSI not available"))
            continue
        fields = dict(part.split("=", 1) for part in first.split()[1:])
        avg10 = float(fields.get("avg10", "0"))
        status = WARN if avg10 > limit else OK
        fix = ("ps -eo pid,comm,%cpu --sort=-%cpu | head  # find and stop the busiest programs"
               if status == WARN and resource == "cpu" else "")
        checks.append(Check(f"{resource} pressure", status,
                            f"{avg10:.1f} % of the last 10 s had stalled tasks", fix))
    return checks


# -- entry point ---------------------------------------------------------------------------


def run_doctor(settings: Settings, as_json: bool) -> int:
    backend, why = open_backend()
    try:
        checks = software_checks(settings) + gpu_checks(backend, settings, why) + host_checks()
    finally:
        if backend is not None:
            backend.close()
    failed = any(c.status == FAIL for c in checks)
    if as_json:
        print(json.dumps({"ok": not failed, "checks": [c.to_dict() for c in checks]}, indent=2))
        return 1 if failed else 0
    from rich.console import Console
    from rich.table import Table

    colour = {OK: "green", WARN: "yellow", FAIL: "red", SKIP: "dim"}
    table = Table(title="steadygen doctor", show_lines=False)
    for col in ("check", "status", "what it saw", "fix"):
        table.add_column(col, overflow="fold")
    for c in checks:
        table.add_row(c.name, f"[{colour[c.status]}]{c.status}[/]", c.detail, c.fix)
    Console().print(table)
    return 1 if failed else 0
