"""Sample: JSON form and Prometheus gauges in base units."""

from __future__ import annotations

import json

from steadygen.telemetry import REASON_NAMES, ForeignCpuProcess, PsiReading, decode_reasons

from .helpers import gpu, proc, sample


def test_decode_reasons() -> None:
    assert decode_reasons(None) == ()
    assert decode_reasons(0) == ()
    assert decode_reasons(0x1 | 0x20 | 0x80) == ("gpu_idle", "sw_thermal", "hw_power_brake")


def test_to_dict_is_json() -> None:
    s = sample(
        1.0,
        gpus=[gpu(clock_event_mask=0x4)],
        processes=[proc(1, True)],
        top_foreign=(ForeignCpuProcess(9, "hog", 99.0, cpu_affinity=(0, 1)),),
        load_avg=(1.0, 0.5, 0.2),
        psi_cpu=PsiReading(2.0, 100),
    )
    data = json.loads(json.dumps(s.to_dict()))
    assert data["gpus"][0]["clock_events"] == ["sw_power_cap"]
    assert data["host"]["top_foreign"][0] == {"pid": 9, "name": "hog", "cpu_pct": 99.0,
                                              "cpu_affinity": [0, 1]}
    assert data["processes"][0]["ours"] is True


def test_gauges_in_base_units() -> None:
    s = sample(
        1.0,
        gpus=[gpu(sm_clock_hz=1.5e9, util_gpu_pct=50, clock_event_mask=0x20)],
        cpu_util_pct=25.0,
        run_delay_ns=2_500_000_000,
        psi_cpu=PsiReading(some_avg10_pct=12.0, some_total_us=3_000_000),
    )
    g = {(name, tuple(sorted(labels.items()))): v for name, labels, v in s.gauges()}
    assert g[("gpu_sm_clock_hertz", (("gpu", "0"),))] == 1.5e9
    assert g[("gpu_utilization_ratio", (("gpu", "0"),))] == 0.5
    assert g[("gpu_power_watts", (("gpu", "0"),))] == 600.0
    assert g[("gpu_temperature_celsius", (("gpu", "0"),))] == 60.0
    assert g[("gpu_clock_event_active", (("gpu", "0"), ("reason", "sw_thermal")))] == 1.0
    assert g[("gpu_clock_event_active", (("gpu", "0"), ("reason", "gpu_idle")))] == 0.0
    assert g[("host_cpu_utilization_ratio", ())] == 0.25
    assert g[("host_run_queue_delay_seconds_total", ())] == 2.5
    assert g[("host_pressure_cpu_some_ratio", ())] == 0.12
    reasons = [lab["reason"] for n, lab, _ in s.gauges() if n == "gpu_clock_event_active"]
    assert tuple(reasons) == REASON_NAMES
    # No process list known: no owner split.
    assert not any(n == "gpu_memory_used_bytes" for n, _, _ in s.gauges())


def test_memory_split_ours_and_others() -> None:
    s = sample(1.0, gpus=[gpu(mem_used_bytes=30 << 30)])
    procs = [proc(1, True, used=20 << 30), proc(2, False, used=6 << 30)]
    mem = {lab["owner"]: v for n, lab, v in s.gauges(procs) if n == "gpu_memory_used_bytes"}
    assert mem == {"ours": float(20 << 30), "others": float(10 << 30)}


def test_label_sets_fixed_per_metric() -> None:
    s = sample(1.0, gpus=[gpu(0), gpu(1)], processes=[proc(1, True)], cpu_util_pct=1.0)
    keys: dict[str, set[frozenset[str]]] = {}
    for name, labels, _ in s.gauges():
        keys.setdefault(name, set()).add(frozenset(labels))
    assert all(len(v) == 1 for v in keys.values()), keys


def test_importing_does_not_load_pynvml_or_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, steadygen.telemetry, steadygen.monitor; "
        "print(sorted({'pynvml', 'torch'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
