"""Precision and recall of CPU-contention attribution per machine shape, on this machine.

    python benchmarks/attribution_accuracy.py [--blocks 10] [--block 3] [--out FILE]

Runs steadygen's full in-process server stack on the tiny model (CPU) once per machine shape
(steadygen/bench/shapes.py: our process pinned to one CPU with burners on the same CPU or on
another, burners on every CPU we may use, burners outside our process tree and session),
alternating clean and interfered blocks, and writes every job's outcome and the score per
shape to docs/figures/attribution_accuracy.json (or --out). The GPU causes are measured by
the replay tests (tests/analysis/test_attribution_gpu_replay.py), whose scenarios are listed
in the JSON as well.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SCHEMA = "steadygen.attribution_accuracy/1"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "figures" / "attribution_accuracy.json"))
    ap.add_argument("--blocks", type=int, default=10, help="alternating blocks per shape")
    ap.add_argument("--block", type=int, default=3, help="jobs per block")
    ap.add_argument("--warm-jobs", type=int, default=8)
    ap.add_argument("--shapes", default="", help="comma-separated subset of shape names")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as the test suite runs the tiny model
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from steadygen.bench.runner import InProcessTarget
    from steadygen.bench.shapes import run_shape, shapes_for_this_machine
    from steadygen.config import load_settings
    from steadygen.engine.tiny import ensure_tiny_checkpoint

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="sg-accuracy-"))
    cache = work / "cache"
    ensure_tiny_checkpoint(cache)

    def make_target(data_dir: Path) -> Any:
        settings = load_settings(data_dir=data_dir, cache_dir=cache, model="zimage-tiny",
                                 device="cpu", sampler_hz=20)
        return InProcessTarget(settings)

    wanted = set(filter(None, args.shapes.split(",")))
    results = []
    t0 = time.monotonic()
    for shape in shapes_for_this_machine():
        if wanted and shape.name not in wanted:
            continue
        result = run_shape(shape, make_target, work, warm_jobs=args.warm_jobs,
                           blocks=args.blocks, block=args.block,
                           say=lambda m: print(m, file=sys.stderr, flush=True))
        score = result.score()
        print(f"{shape.name}: {score}", flush=True)
        results.append(result.to_dict())
    doc = {
        "schema": SCHEMA,
        "command": "python benchmarks/attribution_accuracy.py " + " ".join(argv or sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
                    "platform": platform.platform(), "python": platform.python_version(),
                    "load_avg_at_end": list(os.getloadavg())},
        "seconds": round(time.monotonic() - t0, 1),
        "shapes": results,
        "gpu_replays": "tests/analysis/test_attribution_gpu_replay.py (clock drop, memory-bound "
                       "steps, clock drop between steps, idle, light and memory-heavy foreign "
                       "processes, container pids)",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
