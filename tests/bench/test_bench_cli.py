"""``steadygen bench`` end to end, as a user runs it: two in-process servers, interleaved
rounds, CPU interference in the second round, and the report written."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image


def test_a_small_ab_run_with_interference_writes_the_report(run_cli, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                            tiny_checkpoint: Path) -> None:
    out = tmp_path / "report"
    result = run_cli(
        "bench", "--config", "A:concurrency=2,empty_cache_per_request=true,warmup=false",
        "--config", "B", "--runs", "4", "--rounds", "2", "--clients", "2",
        "--warmup-runs", "1", "--steps", "2", "--interfere", "cpu:procs=1,seconds=120",
        "--out", str(out), timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "# steadygen bench report" in result.stdout
    assert "round 2/2: B, 2 runs with interference" in result.stderr

    data = json.loads((out / "report.json").read_text())
    assert data["meta"]["command"].startswith("steadygen bench --config A:")
    runs = data["runs"]
    assert len(runs) == 10 and all(r["state"] == "succeeded" for r in runs)
    timed = [r for r in runs if not r["warmup"]]
    assert {(r["round"], r["interfered"]) for r in timed} == {(0, False), (1, True)}
    for name in ("A", "B"):
        c = data["configs"][name]
        assert c["runs"] == 4 and c["latency"]["n"] == 4
        assert c["interfered"]["n"] == 2 and c["clean"]["n"] == 2
        assert set(c["latency_ci"]) == {"mean", "cv", "p99_over_p50", "p50", "p99"}
    # Every run carries its diagnosis. A empties the cache after every job: that is booked
    # at its measured cost (named when past the noise floor); B never empties it.
    a_memory = [r["causes"].get("memory_management") for r in timed if r["config"] == "A"]
    assert all(s is None or s > 0 for s in a_memory)
    assert not any("memory_management" in r["causes"] for r in timed if r["config"] == "B")
    warm_a = next(r for r in runs if r["warmup"] and r["config"] == "A")
    assert "cold_start" in warm_a["causes"]  # no warm-up: the first job paid the shape
    assert len(data["differences"]) == 5
    for png in ("latency.png", "steps.png", "clocks.png"):
        with Image.open(out / png) as im:
            im.verify()
    assert "<table>" in (out / "report.html").read_text()
    assert "| A | 4 |" in (out / "report.md").read_text()
