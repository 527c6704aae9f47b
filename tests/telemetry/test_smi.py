"""The nvidia-smi fallback: CSV parsed by header names, and one looping process."""

from __future__ import annotations

import stat
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from steadygen.telemetry import TelemetryUnavailable
from steadygen.telemetry.smi import SmiBackend, parse_smi_apps_csv, parse_smi_csv

DATA = Path(__file__).resolve().parents[1] / "data"
UUID0 = "GPU-5a8e2f3c-1b7d-4c11-9a0e-3f2b6c7d8e90"
UUID1 = "GPU-0c4d9e21-77aa-4e3b-b5c2-1d8f0a6e4b37"


def test_parse_requested_order() -> None:
    g0, g1 = parse_smi_csv((DATA / "nvidia_smi_query_gpu.csv").read_text())
    assert (g0.index, g0.uuid, g0.name, g0.pstate) == (0, UUID0, "NVIDIA H100 80GB HBM3", 0)
    assert g0.sm_clock_hz == pytest.approx(1.755e9)
    assert g0.sm_clock_max_hz == pytest.approx(1.98e9)
    assert g0.mem_clock_hz == pytest.approx(2.619e9)
    assert g0.power_w == pytest.approx(612.45) and g0.power_limit_w == pytest.approx(700)
    assert g0.mem_used_bytes == 40211 << 20 and g0.mem_total_bytes == 81559 << 20
    assert g0.util_gpu_pct == 98 and g0.util_mem_pct == 41
    assert g0.temp_c == 71 and g0.temp_margin_c == 16
    assert g0.clock_events == ("sw_power_cap",)
    assert g1.pstate == 8 and g1.clock_events == ("gpu_idle",)
    assert g1.temp_margin_c is None  # [N/A]


def test_parse_other_order_units_in_values_and_reason_columns() -> None:
    g0, g1 = parse_smi_csv((DATA / "nvidia_smi_query_gpu_reordered.csv").read_text())
    assert g0.index == 0 and g0.name == "NVIDIA GeForce RTX 4090"
    assert g0.uuid == "GPU-9f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"
    assert g0.sm_clock_hz == pytest.approx(2.31e9) and g0.sm_clock_max_hz == pytest.approx(3.105e9)
    assert g0.power_w == pytest.approx(449.87)
    assert g0.util_gpu_pct == 100 and g0.mem_used_bytes == 20110 << 20
    assert g0.temp_c == 84 and g0.pstate == 2
    assert set(g0.clock_events) == {"sw_thermal", "sw_power_cap"}
    assert g1.index == 1
    assert g1.mem_clock_hz is None and g1.mem_clock_max_hz is None  # [Not Supported]
    assert g1.power_w is None and g1.power_limit_w is None  # [N/A]
    assert g1.clock_event_mask == 0


def test_parse_compute_apps() -> None:
    text = (DATA / "nvidia_smi_compute_apps.csv").read_text()
    procs = parse_smi_apps_csv(text, {UUID0: 0, UUID1: 1}, own_pids={4242})
    by_pid = {p.pid: p for p in procs}
    assert by_pid[4242].ours and by_pid[4242].used_bytes == 20480 << 20
    assert not by_pid[5151].ours and by_pid[5151].gpu_index == 0
    assert by_pid[6161].gpu_index == 1 and by_pid[6161].used_bytes is None
    assert by_pid[5151].name == "/opt/other/service"


FAKE_SMI = """\
#!{python}
import sys, time
args = sys.argv[1:]
query = next((a for a in args if a.startswith("--query")), "")
if query.startswith("--query-compute-apps"):
    print("pid, process_name, used_gpu_memory [MiB], gpu_uuid")
    print("777, other, 100, GPU-a")
    sys.exit(0)
if "clocks_event_reasons.active" in query:  # an older driver: only the throttle alias
    print('Field "clocks_event_reasons.active" is not a valid field to query.')
    sys.exit(2)
header = ("index, uuid, name, clocks.current.sm [MHz], clocks.max.sm [MHz], "
          "clocks_throttle_reasons.active, power.draw [W]")
print(header, flush=True)
if "-lms" not in args:
    print("0, GPU-a, Fake GPU, 1000, 2000, 0x0000000000000000, 100.00", flush=True)
    sys.exit(0)
n = 0
while True:
    n += 1
    print(f"0, GPU-a, Fake GPU, {{1000 + n}}, 2000, 0x0000000000000020, 150.00", flush=True)
    time.sleep(0.02)
"""


@pytest.fixture
def fake_smi(tmp_path: Path) -> Path:
    exe = tmp_path / "nvidia-smi"
    exe.write_text(textwrap.dedent(FAKE_SMI).format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


def test_backend_loops_one_process_and_kills_it_on_close(fake_smi: Path) -> None:
    backend = SmiBackend(interval_s=0.02, executable=str(fake_smi))
    try:
        assert "clocks_throttle_reasons.active" in backend._fields
        proc = psutil.Process(backend.pid)
        deadline = time.monotonic() + 20
        reading = backend.read_gpus()[0]
        while reading.sm_clock_hz == pytest.approx(1e9) and time.monotonic() < deadline:
            time.sleep(0.02)
            reading = backend.read_gpus()[0]
        assert reading.sm_clock_hz > 1e9  # from the looping process, not the probe
        assert reading.clock_events == ("sw_thermal",)
        assert reading.power_w == pytest.approx(150.0)
        procs = backend.read_processes(own_pids=set())  # starts a refresh in the background
        while not procs and time.monotonic() < deadline:
            time.sleep(0.02)
            procs = backend.read_processes(own_pids={777})
        assert [(p.pid, p.gpu_index, p.ours) for p in procs] == [(777, 0, True)]
        assert [c.index for c in backend.read_counters()] == [0]
        assert backend.static_info()[0].sm_clock_max_hz == pytest.approx(2e9)
    finally:
        backend.close()
    assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE


def test_backend_that_cannot_query_is_unavailable(tmp_path: Path) -> None:
    exe = tmp_path / "nvidia-smi"
    exe.write_text(f"#!{sys.executable}\nimport sys\nprint('No devices were found')\nsys.exit(6)\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(TelemetryUnavailable, match="No devices were found"):
        SmiBackend(executable=str(exe))
