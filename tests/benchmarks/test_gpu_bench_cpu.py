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
CONFIGS = ("baseline", "sg-sdpa", "sg-eager", "sg-compile", "sg-graphs", "sg-fp8")


def run(script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(GPU / script), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("gpu-bench")
    proc = run("zimage_full.py", "--reduced", "--out", str(out), "--runs", "2",
               "--steps", "2", "--configs", ",".join(CONFIGS), "--compile-backend", "eager",
               "--hog-runs", "2")
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
    for name in ("baseline", "sg-sdpa", "sg-eager", "sg-compile", "sg-graphs"):
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
    # sg-compile is prepared first of the compiled ones and pays the compile at its warm-up;
    # sg-graphs shares its compiled blocks and pays only its graph capture
    assert configs["sg-compile"]["cold_start"]["compiles"] >= 1
    assert "static shapes" in configs["sg-compile"]["applied"]["compile"]
    assert configs["sg-graphs"]["applied"]["compile"].startswith("shares")
    assert configs["sg-graphs"]["cold_start"]["compiles"] == 0
    assert configs["sg-graphs"]["cold_start"]["graph_captures"] >= 1  # the eager replay
    assert configs["sg-graphs"]["graph_captures_during_timed_runs"] == 0
    for name in ("sg-compile", "sg-graphs"):
        assert configs[name]["graph_breaks_during_timed_runs"] == 0


def test_the_committed_fields_are_at_the_top(bench: dict[str, Any]) -> None:
    assert bench["device"].startswith("cpu") and bench["versions"]["torch"]
    assert {"python", "torch", "cuda", "cudnn", "diffusers", "transformers",
            "torchao"} <= set(bench["versions"])
    for name, c in bench["configs"].items():
        assert {"median_s", "p99_s", "cv", "peak_vram_gib", "exact"} <= set(c), name
        if c["status"] == "ok":
            assert c["median_s"] == c["stats"]["median_s"] and c["exact"] is True
            assert c["first_after_ready_ratio"] > 0
    assert bench["configs"]["sg-fp8"]["exact"] is None  # refused: nothing to compare
    hog = bench["cpu_hog"]
    assert hog["config"] == bench["summary"]["best_config"]
    assert hog["hog_processes"] >= 1 and len(hog["runs_s"]) == 2
    assert hog["p99_over_p50"] == pytest.approx(hog["p99_s"] / hog["median_s"])


def test_the_memory_modes_report_their_peak_and_their_moves(bench: dict[str, Any]) -> None:
    modes = bench["memory_modes"]
    assert set(modes) >= {"high", "balanced", "low"}, modes
    assert modes["high"]["offload_s"] == 0.0
    # on a CPU the weights go to a second name for host memory: real moves, no peak
    assert modes["balanced"]["offload_s"] > 0
    assert set(modes["balanced"]["offload_phases_s"]) == {"encode"}
    assert modes["balanced"]["where"]["text_encoder"] == "cpu:1"
    assert set(modes["low"]["where"].values()) == {"cpu:1"}
    assert modes["low"]["applied"]["fp8_storage"].startswith("transformer weights stored")
    assert all(modes[m]["peak_vram_gib"] is None for m in ("high", "balanced", "low"))


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
    # which layers FP8 would take: the big linears, never the caption refiner
    layers = fp8["fp8_layers"]
    assert layers["count"] == len(layers["names"]) > 0
    assert not any(n.startswith("context_refiner") for n in layers["names"])
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


def load_zimage_full() -> Any:
    sys.path.insert(0, str(GPU))
    try:
        import zimage_full
    finally:
        sys.path.remove(str(GPU))
    return zimage_full


def fake_runner(name: str, warm_s: float = 1.0) -> Any:
    return types.SimpleNamespace(spec=types.SimpleNamespace(name=name), runs_s=[],
                                 out={"status": "ok", "warmup_runs_s": [warm_s]})


def test_the_rotation_sheds_secondary_configs_to_fit_the_budget() -> None:
    zf = load_zimage_full()
    names = ["baseline", "sg-eager", "sg-compile", "sg-graphs", "sg-fp8"]
    args = types.SimpleNamespace(runs=30, hog_runs=0)
    # 5 rounds of 3 configs x 1.15 s = 17.25 s (+10 s margin) fit 30 s; of 4 or 5 they do not
    bench = types.SimpleNamespace(args=args, left=lambda: 30.0)
    kept = zf.fit_rotation(bench, [fake_runner(n) for n in names])
    assert [r.spec.name for r in kept] == ["baseline", "sg-graphs", "sg-fp8"]
    roomy = types.SimpleNamespace(args=args, left=lambda: 1e9)
    assert len(zf.fit_rotation(roomy, [fake_runner(n) for n in names])) == 5


def test_rounds_are_sized_from_the_measured_run_time() -> None:
    zf = load_zimage_full()
    active = [fake_runner(n, 0.5) for n in ("baseline", "sg-graphs")]  # a round: 1.15 s
    args = types.SimpleNamespace(runs=30, hog_runs=10)  # the hog stage: 10 x 0.75 + 5 s
    bench = types.SimpleNamespace(args=args, left=lambda: 40.0)
    assert zf.hog_reserve_s(bench, active) == pytest.approx(12.5)
    assert zf.planned_rounds(bench, active) == int((40 - 12.5 - 10) // 1.15)  # 15
    rich = types.SimpleNamespace(args=args, left=lambda: 1e6)
    assert zf.planned_rounds(rich, active) == 30  # never more than --runs


def test_a_run_out_of_time_still_writes_its_summary(tmp_path: Path) -> None:
    """Review item 1: configs skipped before preparation (no transformer, no FP8 copy) must
    not stop the summary."""
    proc = run("zimage_full.py", "--reduced", "--out", str(tmp_path), "--runs", "2",
               "--steps", "1", "--configs", "baseline,sg-eager,sg-fp8", "--budget-s", "1",
               "--hog-runs", "2", "--no-fp32-ref", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "zimage_full.json").read_text())
    assert data["status"] == "partial" and "summary" in data and not data["errors"]
    skipped = [c for c in data["configs"].values() if c["status"] == "skipped"]
    assert skipped and all("time budget" in c["reason"] for c in skipped)
    assert "skipped" in data["cpu_hog"]
    assert (tmp_path / "zimage_full.txt").read_text().startswith("config")


# Carried wheels whose metadata declares no requirements (torchao 0.18's wheel has no
# Requires-Dist): checked by reading the wheel, not installed here.
NO_REQUIREMENTS = {"torchao"}


def test_the_carried_wheels_resolve_with_what_the_gpu_image_has() -> None:
    """Review item 3: every requirement of a carried wheel is carried too or on the image
    (this is what missed lazy-importer). Checked against the installed metadata here."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    def names(path: Path) -> set[str]:
        lines = (ln.split("#")[0].strip() for ln in path.read_text().splitlines())
        return {canon(ln.split("==")[0]) for ln in lines if ln}

    def canon(name: str) -> str:
        return name.lower().replace("_", "-").replace(".", "-")

    carried, image = names(GPU / "carry.txt"), names(GPU / "gpu_image.txt")
    env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython",
           "extra": ""}
    missing = {}
    for dist in carried:
        try:
            requires = md.requires(dist) or []
        except md.PackageNotFoundError:  # not installed here (the CPU extras lack torchao)
            assert dist in NO_REQUIREMENTS, f"{dist}: install it here to check its needs"
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            if canon(req.name) not in carried | image:
                missing.setdefault(dist, []).append(req.name)
    assert not missing, f"carry.txt lacks what these need: {missing}"
    assert "torch" not in carried
    locked = names(GPU / "wheels.lock")
    assert carried <= locked, carried - locked  # fetch_wheels.sh can fetch every one


def test_run_sh_stops_without_torch_and_never_installs_it(tmp_path: Path) -> None:
    """Review item 3: torch comes with the machine. A Python without it (a fresh venv here)
    stops the script before anything is installed, saying so."""
    import venv

    venv.create(tmp_path / "venv", with_pip=False, system_site_packages=False)
    site = tmp_path / "site"
    proc = subprocess.run(
        ["bash", str(GPU / "run.sh"), str(tmp_path / "out")], capture_output=True, text=True,
        timeout=120, cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHON": str(tmp_path / "venv" / "bin" / "python"),
             "SITE_DIR": str(site), "WHEELS": str(tmp_path / "no-wheels")},
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "run.sh never installs torch" in proc.stdout
    summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    assert summary["stages"] == [{"stage": "torch_check", "rc": 1, "seconds": 0}]
    assert not site.exists()
