"""benchmarks/gpu on the CPU: the full-size benchmark's code in its reduced mode, and the
trace recorder, each as a real subprocess, checked by the JSON they leave.

The reduced mode runs the same code as a GPU run (configurations sharing one set of
weights, warm-up, correctness against the baseline and an fp32 copy, interleaved timed
runs, statistics, the FLOP count of the full-size architecture on the meta device) at toy
widths. Compile traces only here (``--compile-backend eager``): the inductor path is
covered in tests/engine; here what matters is that the plumbing runs and reports.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from steadygen.telemetry.window import in_window

ROOT = Path(__file__).resolve().parents[2]
GPU = ROOT / "benchmarks" / "gpu"
CONFIGS = ("baseline", "sg-sdpa", "sg-attn", "sg-compile", "sg-fp8", "sg-bf16", "sg-all")


def run(script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(GPU / script), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("gpu-bench")
    proc = run("zimage_full.py", "--reduced", "--out", str(out), "--runs", "2",
               "--steps", "2", "--configs", ",".join(CONFIGS), "--compile-backend", "eager")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "zimage_full.json").read_text())
    data["_stdout"] = proc.stdout
    data["_table"] = (out / "zimage_full.txt").read_text()
    return data


def test_the_run_completes_with_its_settings_and_environment(bench: dict[str, Any]) -> None:
    assert bench["schema"] == "steadygen.gpu_bench/1"
    assert bench["mode"] == "reduced" and bench["status"] == "complete"
    assert bench["settings"]["runs_target"] == 2 and bench["settings"]["steps"] == 2
    assert {"torch", "diffusers", "transformers", "device"} <= set(bench["env"])
    assert not bench["errors"], bench["errors"]
    stages = [t["stage"] for t in bench["timeline"]]
    assert stages[0] == "start" and stages[-1] == "done" and "build" in stages


def test_flops_are_counted_and_the_full_size_count_matches_the_design(
    bench: dict[str, Any],
) -> None:
    flops = bench["flops"]
    assert flops["per_image"] == (2 * flops["transformer_step"] + flops["text_encoder"]
                                  + flops["vae_decode"])
    full = flops["full_size_1024"]  # DESIGN.md: 55.1 TFLOP per step at 32 caption tokens
    assert full["caption_tokens"] <= 32
    assert full["transformer_step"] / 1e12 == pytest.approx(55.1, abs=0.1)
    assert full["per_image"] / 1e12 == pytest.approx(455, abs=1)
    assert bench["matmul"]["flops_per_s"] > 0
    assert bench["summary"]["floor_s"] == pytest.approx(
        flops["per_image"] / bench["matmul"]["flops_per_s"])
    assert "native" in bench["attention_bench"]["backends"]


def test_every_config_reports_times_phases_and_cold_start(bench: dict[str, Any]) -> None:
    configs = bench["configs"]
    assert set(configs) == set(CONFIGS)
    for name in ("baseline", "sg-sdpa", "sg-attn", "sg-compile", "sg-bf16", "sg-all"):
        c = configs[name]
        assert c["status"] == "ok", (name, c)
        s = c["stats"]
        assert s["n"] == 2 and len(c["runs_s"]) == 2
        assert s["min_s"] <= s["median_s"] <= s["p90_s"] <= s["p99_s"] <= s["max_s"]
        assert s["cv"] >= 0 and c["recompiles_during_timed_runs"] == 0
        assert c["speedup_vs_baseline"] > 0 and c["floor_ratio"] > 0
        assert c["cold_start"]["first_run_s"] > 0
        if name != "baseline":
            assert set(c["phases_median_s"]) >= {"encode", "steps", "decode", "warmup"}
    # sg-bf16 is prepared first of the compiled ones and pays the compile at its warm-up;
    # on a CPU sg-compile's attention is the same (SDPA), so it reuses the compiled blocks
    assert configs["sg-bf16"]["cold_start"]["compiles"] >= 1
    assert "repeated blocks" in configs["sg-bf16"]["applied"]["compile"]
    assert configs["sg-compile"]["applied"]["compile"].startswith("shares")


def test_correctness_is_compared_for_every_config_that_ran(bench: dict[str, Any]) -> None:
    for name, c in bench["configs"].items():
        if c["status"] != "ok":
            continue
        corr = c["correctness"]
        assert corr["kind"] == "bf16" and corr["tolerance"] == 0.02
        assert corr["passed"] is True, (name, corr)
        assert 0 <= corr["latent_rel_l2_vs_baseline"] <= corr["tolerance"]
        assert corr["latent_rel_l2_vs_fp32"] < 0.05  # bf16 against an fp32 copy
        assert corr["image_psnr_db_vs_baseline"] is None or corr[
            "image_psnr_db_vs_baseline"] > 30  # None: identical (infinite PSNR)
    assert bench["configs"]["baseline"]["correctness"]["latent_rel_l2_vs_baseline"] == 0


def test_fp8_is_refused_on_the_cpu_and_the_combined_config_says_so(
    bench: dict[str, Any],
) -> None:
    fp8 = bench["configs"]["sg-fp8"]
    assert fp8["status"] == "refused" and "8.9" in fp8["reason"] and "CPU" in fp8["reason"]
    combined = bench["configs"]["sg-all"]["applied"]
    assert combined["fp8"].startswith("not applied: FP8 needs")
    assert "sg-fp8" in bench["_table"] and "refused" in bench["_table"]


def test_record_trace_needs_a_gpu_or_says_use_reduced(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the GPU trace would run")
    proc = run("record_trace.py", "--out", str(tmp_path), timeout=120)
    assert proc.returncode == 2
    assert "needs a CUDA GPU" in proc.stdout and "--reduced" in proc.stdout
    assert not (tmp_path / "nvml_trace.json").exists()


def test_record_trace_reduced_writes_host_samples_with_job_and_step_marks(
    tmp_path: Path,
) -> None:
    proc = run("record_trace.py", "--reduced", "--out", str(tmp_path), "--jobs", "1",
               "--steps", "2", "--idle-s", "0.2", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trace = json.loads((tmp_path / "nvml_trace.json").read_text())
    assert trace["schema"] == "steadygen.nvml_trace/1" and trace["mode"] == "host-only"
    assert [j["job_id"] for j in trace["jobs"]] == ["cold", "warm-1"]
    assert trace["samples"] and all("host" in s and "t_mono" in s for s in trace["samples"])
    steps = [m for m in trace["marks"] if m["kind"] == "step_end"]
    assert len(steps) == 2 * 2
    for job in trace["jobs"]:  # the one edge rule, half-open: start <= t < end
        inside = [s for s in trace["samples"]
                  if in_window(s["t_mono"], job["t_start"], job["t_end"])]
        assert len(inside) == job["window"]["n_samples"]
    times = [m["t_mono"] for m in trace["marks"] if m["job"] == "cold"]
    assert times == sorted(times)


def test_the_rotation_sheds_secondary_configs_to_fit_the_budget() -> None:
    sys.path.insert(0, str(GPU))
    try:
        import zimage_full
    finally:
        sys.path.remove(str(GPU))

    def runner(name: str) -> Any:
        return types.SimpleNamespace(spec=types.SimpleNamespace(name=name),
                                     out={"status": "ok", "warmup_runs_s": [1.0]})

    names = ["baseline", "sg-attn", "sg-compile", "sg-fp8", "sg-bf16", "sg-all"]
    bench = types.SimpleNamespace(args=types.SimpleNamespace(runs=30), left=lambda: 150.0)
    kept = zimage_full.fit_rotation(bench, [runner(n) for n in names])
    # 4 configs x 30 runs x 1.15 s = 138 s fits 150 s: sg-compile and sg-fp8 leave first
    assert [r.spec.name for r in kept] == ["baseline", "sg-attn", "sg-bf16", "sg-all"]
    roomy = types.SimpleNamespace(args=types.SimpleNamespace(runs=30), left=lambda: 1e9)
    assert len(zimage_full.fit_rotation(roomy, [runner(n) for n in names])) == 6
