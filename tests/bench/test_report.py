"""The report: JSON with everything, Markdown tables, three PNG charts and an HTML page, all
of which open; and its numbers are the statistics of the runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from steadygen.bench.report import analyse, write_report
from steadygen.bench.runner import BenchPlan, RunRecord
from steadygen.bench.stats import bootstrap_difference, summarize

A = [1.2, 1.5, 1.1, 2.9, 1.3, 1.4, 1.2, 3.5, 1.6, 1.3]
B = [1.0, 1.1, 0.9, 1.05, 1.2, 1.0, 0.95, 1.1, 1.3, 1.0]


def records(gpu: bool) -> list[RunRecord]:
    out = []
    for config, values in (("A", A), ("B", B)):
        out.append(RunRecord(config, 0, -1, True, False, "succeeded", 1000.0, 4.0, 0.0, 4.0,
                             main_cause="cold_start", causes={"cold_start": 3.0}))
        for i, latency in enumerate(values, start=1):
            interfered = i > 5
            cause = "cpu_contention" if interfered and latency > 1.2 else None
            tel: dict = {"host": {"cpu_util_pct": {"min": 20.0 + i, "median": 50.0,
                                                   "max": 90.0}}}
            if gpu:
                tel["gpus"] = {"0": {"sm_clock_hz": {"min": 1.5e9, "median": 1.9e9,
                                                     "max": 1.98e9},
                                     "temp_c": {"min": 60.0, "median": 65.0, "max": 70.0 + i},
                                     "util_gpu_pct": {"min": 90.0, "median": 99.0,
                                                      "max": 100.0},
                                     "power_w": None}}
            out.append(RunRecord(
                config, i, (i - 1) // 5, False, interfered, "succeeded", 1000.0 + i, latency,
                0.1, latency - 0.1, steps_s=[0.1 * latency] * 8, main_cause=cause,
                causes={cause: latency - 1.0} if cause else {}, slow=cause is not None,
                telemetry=tel,
                interference={"valid": True, "reason": "", "achieved": {"cpu_pct": 190.0}}
                if interfered else None))
    out.append(RunRecord("B", 11, 1, False, True, "failed", 1020.0, 0.5, None, None,
                         error="GenerationError: boom"))
    return out


def test_analysis_matches_the_statistics_of_the_runs() -> None:
    a = analyse(records(gpu=False), ["A", "B"])
    assert a["configs"]["A"]["latency"] == summarize(A).to_dict()
    assert a["configs"]["B"]["latency"] == summarize(B).to_dict()  # the failed run is out
    assert a["configs"]["B"]["failed"] == 1 and a["configs"]["A"]["runs"] == 10
    assert a["configs"]["A"]["clean"] == summarize(A[:5]).to_dict()
    assert a["configs"]["A"]["interfered"] == summarize(A[5:]).to_dict()
    assert a["configs"]["A"]["interfered_invalid"] == 0
    cv = a["configs"]["A"]["latency_ci"]["cv"]
    assert cv["value"] == pytest.approx(summarize(A).cv) and cv["low"] < cv["value"] < cv["high"]
    diffs = {d["statistic"]: d for d in a["differences"]}
    assert set(diffs) == {"mean", "p50", "p99", "cv", "p99_over_p50"}
    assert diffs["mean"] == bootstrap_difference(A, B, "mean", names=("A", "B")).to_dict()
    att = a["configs"]["A"]["attribution"]
    # interfered runs above 1.2 s: 1.4, 3.5, 1.6, 1.3, each with its excess over 1 s
    assert att["main_cause_counts"] == {"none": 6, "cpu_contention": 4}
    assert att["cause_seconds"]["cpu_contention"] == pytest.approx(0.4 + 2.5 + 0.6 + 0.3)
    assert att["slow_runs"] == 4
    assert a["configs"]["A"]["warmup_runs"] == [
        {"latency_s": 4.0, "service_s": 4.0, "main_cause": "cold_start"}]
    assert a["configs"]["A"]["telemetry"]["host_cpu_util_pct"] == {
        "min": 21.0, "max": 90.0, "spread": 69.0}


@pytest.mark.parametrize("gpu", [False, True])
def test_every_report_file_exists_and_opens(tmp_path: Path, gpu: bool) -> None:
    plan = BenchPlan(request={"prompt": "p", "steps": 8}, runs=10, rounds=2)
    paths = write_report(tmp_path / "out", records(gpu), ["A", "B"], plan,
                         {"A": {"concurrency": "4"}, "B": {}}, "steadygen bench --config A")
    assert set(paths) == {"json", "markdown", "html", "latency", "steps", "clocks"}
    data = json.loads(paths["json"].read_text())
    assert data["meta"]["command"] == "steadygen bench --config A"
    assert data["meta"]["configs"] == {"A": {"concurrency": "4"}, "B": {}}
    assert len(data["runs"]) == 23 and set(data["configs"]) == {"A", "B"}
    if gpu:
        assert data["configs"]["A"]["telemetry"]["sm_clock_hz"]["min"] == 1.5e9
    for name in ("latency", "steps", "clocks"):
        assert paths[name].suffix == ".png"
        with Image.open(paths[name]) as im:
            im.verify()
        with Image.open(paths[name]) as im:
            assert im.size[0] > 500 and im.size[1] > 200
    md = paths["markdown"].read_text()
    assert "| config | runs | mean | std | CV | p50 | p90 | p99 | p99/p50 | min | max |" in md
    assert "## 95 % confidence intervals" in md and "## Clean and interfered runs" in md
    assert "![latency](latency.png)" in md and "A - B" in md
    page = paths["html"].read_text()
    assert page.startswith("<!doctype html>") and page.count("<table>") >= 5
    assert page.count("<img") == 3 and "data:image/png;base64," in page


def test_every_cause_kind_has_a_colour() -> None:
    from steadygen.analysis.causes import CAUSE_KINDS
    from steadygen.bench.report import CAUSE_COLOURS

    assert set(CAUSE_COLOURS) - {None} == set(CAUSE_KINDS)
