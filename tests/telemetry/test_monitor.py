"""``steadygen monitor``: --once --json prints one sample; the table view renders."""

from __future__ import annotations

import io
import json

from rich.console import Console

from steadygen.monitor import render, run_monitor
from steadygen.telemetry import ForeignCpuProcess, PsiReading

from . import fake_pynvml as fk
from .fake_pynvml import FakeNvml
from .helpers import gpu, proc, sample


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=160, force_terminal=False, color_system=None), out


def test_once_json_prints_one_sample(fake_nvml: FakeNvml, no_nvidia_smi: None) -> None:
    fake_nvml.init_error = fk.NVML_ERROR_LIBRARY_NOT_FOUND
    console, out = _console()
    assert run_monitor(0.1, once=True, as_json=True, console=console) == 0
    data = json.loads(out.getvalue())
    assert data["gpus"] == []
    assert data["host"]["cpu_seconds"] is not None
    assert data["host"]["cpu_count"] >= 1
    assert "run_delay_ns" in data["host"] and "psi_cpu" in data["host"]


def test_once_table_without_gpu(fake_nvml: FakeNvml, no_nvidia_smi: None) -> None:
    fake_nvml.init_error = fk.NVML_ERROR_LIBRARY_NOT_FOUND
    console, out = _console()
    assert run_monitor(0.1, once=True, as_json=False, console=console) == 0
    text = out.getvalue()
    assert "no NVIDIA GPU telemetry" in text
    assert "run-queue delay" in text and "CPU" in text


def test_once_table_with_fake_gpu(fake_nvml: FakeNvml) -> None:
    fake_nvml.devices[0].update(util_gpu=97, sm_clock_mhz=1400, clock_events=fk.SW_THERMAL)
    console, out = _console()
    assert run_monitor(0.1, once=True, as_json=False, console=console) == 0
    text = out.getvalue()
    assert "1400/1980" in text and "sw_thermal" in text


def test_render_marks_the_unusual() -> None:
    prev = sample(1.0, run_delay_ns=0)
    cur = sample(
        2.0,
        gpus=[gpu(temp_c=88, temp_margin_c=2, sm_clock_hz=1.2e9, clock_event_mask=0x40)],
        processes=[proc(1, True), proc(66, False, name="blender")],
        run_delay_ns=150_000_000,
        cpu_util_pct=99.0,
        cpu_count=2,
        load_avg=(4.0, 2.0, 1.0),
        psi_cpu=PsiReading(35.0, 10),
        top_foreign=(ForeignCpuProcess(66, "blender", 180.0),),
    )
    out = io.StringIO()
    console = Console(file=out, width=160, force_terminal=True, color_system="standard")
    console.print(render(prev, cur, queue=3, alerts=["GPU 0 at 88 C, over 75 C"]))
    text = out.getvalue()
    assert "150.0 ms/s" in text and "blender" in text and "hw_thermal" in text
    assert "\x1b[1;31m" in text  # bold red appears
    assert "our queue" in text


def test_bad_interval() -> None:
    console, out = _console()
    assert run_monitor(0, once=True, as_json=False, console=console) == 2
    assert "--interval must be positive" in out.getvalue()
