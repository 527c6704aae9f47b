"""Precision and recall of the GPU causes over replayed NVML traces, including the scenarios
that break the clock model's assumptions.

    python benchmarks/attribution_replays.py [--out docs/figures/attribution_gpu_replays.json]

Each scenario is a synthetic job stepped through the fake pynvml (tests/telemetry/
fake_pynvml.py) and read by steadygen's real NVML backend and Sampler, exactly as the replay
tests do (tests/analysis/test_attribution_gpu_replay.py), then attributed. The truth is
what the scenario was built with: which causes slowed it, and by how many seconds.
No GPU is needed; the figures say whether the model names the right causes and sizes them
within what they cost, not how fast any GPU is.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SCHEMA = "steadygen.attribution_gpu_replays/1"
CAUSES = ("gpu_clocks", "foreign_gpu_process")


def scenarios(foreign_pid: int) -> list[dict[str, Any]]:
    from tests.telemetry import fake_pynvml as fk
    from tests.telemetry.fake_pynvml import FakeProcess

    slow = 0.1 / 0.6
    return [
        {"name": "thermal clock drop and a foreign process at 45 % SM",
         "args": dict(clock_ratio=0.6, reason=fk.SW_THERMAL, throttle="sw_thermal",
                      foreign=FakeProcess(pid=foreign_pid, used_bytes=6 << 30, sm_util=45)),
         "truth": {"gpu_clocks": 8 * 0.1 * (1 / 0.6 - 1),
                   "foreign_gpu_process": 0.8 - 8 * 0.1 * (1 / 0.6 - 1)}},
        {"name": "power-capped clock (75 %), compute-bound steps",
         "args": dict(clock_ratio=0.75, reason=fk.SW_POWER_CAP, throttle="sw_power_cap",
                      foreign=None),
         "truth": {"gpu_clocks": 8 * 0.1 * (1 / 0.75 - 1)}},
        {"name": "memory-bound steps that do not slow with a 60 % clock; slow decode",
         "args": dict(clock_ratio=0.6, reason=fk.SW_POWER_CAP, throttle="sw_power_cap",
                      foreign=None, steps=[0.1] * 8, decode=0.6),
         "truth": {}},
        {"name": "clock drop between steps 4 and 5, compute-bound",
         "args": dict(clock_ratio=1.0, reason=fk.SW_THERMAL, throttle="sw_thermal",
                      foreign=None, steps=[0.1] * 4 + [slow] * 4, ratios=[1.0] * 4 + [0.6] * 4),
         "truth": {"gpu_clocks": 4 * (slow - 0.1)}},
        {"name": "clock drop between steps that did not slow them; all steps 30 % slow",
         "args": dict(clock_ratio=1.0, reason=fk.SW_THERMAL, throttle="sw_thermal",
                      foreign=None, steps=[0.13] * 8, ratios=[1.0] * 4 + [0.6] * 4),
         "truth": {}},
        {"name": "idle foreign process holding 6 GiB; unmeasured slowdown",
         "args": dict(clock_ratio=1.0, reason=0, throttle=None,
                      foreign=FakeProcess(pid=foreign_pid, used_bytes=6 << 30)),
         "truth": {}},
        {"name": "light foreign process (10 % SM) during a 2x slowdown",
         "args": dict(clock_ratio=1.0, reason=0, throttle=None,
                      foreign=FakeProcess(pid=foreign_pid, used_bytes=2 << 30, sm_util=10,
                                          mem_util=5)),
         "truth": {"foreign_gpu_process": 0.16}},
        {"name": "memory-heavy foreign process (30 % memory traffic)",
         "args": dict(clock_ratio=1.0, reason=0, throttle=None,
                      foreign=FakeProcess(pid=foreign_pid, sm_util=5, mem_util=30)),
         "truth": {"foreign_gpu_process": 0.48}},
        {"name": "our own process under a host pid (container), no foreign process",
         "args": dict(clock_ratio=1.0, reason=0, throttle=None, foreign=None,
                      ours_pid=3_170_001, own_gpu_bytes=lambda index: 39 << 29),
         "truth": {}},
    ]


def run() -> dict[str, Any]:
    from steadygen.analysis.attribute import attribute
    from tests.analysis.test_attribution_gpu_replay import BASE_MHZ, gpu_expectation, replay
    from tests.telemetry import fake_pynvml
    from tests.telemetry.fake_pynvml import FakeDevice, FakeNvml

    sys.modules["pynvml"] = fake_pynvml  # type: ignore[assignment]
    foreign = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    rows = []
    try:
        for sc in scenarios(foreign.pid):
            nv = fake_pynvml.install(FakeNvml(devices=[FakeDevice(
                sm_clock_mhz=BASE_MHZ, util_gpu=100, temp_c=70, power_mw=650_000)]))
            t, window = replay(nv, **sc["args"])
            d = attribute(t, gpu_expectation(), window)
            booked = {c.kind: round(c.seconds, 4) for c in d.causes}
            rows.append({"scenario": sc["name"],
                         "truth_s": {k: round(v, 4) for k, v in sc["truth"].items()},
                         "booked_s": booked, "unexplained_s": round(d.unexplained_s or 0, 4),
                         "excess_s": round(d.excess_s or 0, 4), "notes": d.notes})
    finally:
        foreign.kill()
        foreign.wait()
    per_cause = {}
    for cause in CAUSES:
        tp = sum(cause in r["truth_s"] and cause in r["booked_s"] for r in rows)
        fp = sum(cause not in r["truth_s"] and cause in r["booked_s"] for r in rows)
        fn = sum(cause in r["truth_s"] and cause not in r["booked_s"] for r in rows)
        err = [abs(r["booked_s"][cause] - r["truth_s"][cause]) for r in rows
               if cause in r["truth_s"] and cause in r["booked_s"]]
        per_cause[cause] = {"tp": tp, "fp": fp, "fn": fn,
                            "precision": tp / (tp + fp) if tp + fp else None,
                            "recall": tp / (tp + fn) if tp + fn else None,
                            "max_abs_error_s": round(max(err), 4) if err else None}
    return {"schema": SCHEMA, "scenarios": rows, "per_cause": per_cause}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "figures"
                                         / "attribution_gpu_replays.json"))
    args = ap.parse_args(argv)
    doc = run()
    doc["command"] = "python benchmarks/attribution_replays.py"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    for cause, s in doc["per_cause"].items():
        print(f"{cause}: {s}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
