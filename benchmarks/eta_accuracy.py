"""ETA accuracy: the ``eta_s`` a client is told when its job is accepted (``POST /v1/jobs``
answers 202 with it) against how long the job really took to finish.

A real ``steadygen serve`` process on the tiny model (``--concurrency 1``). Warm-up: one job
of each shape in the mix, so the server has a warm baseline for each (excluded). Then
``--bursts`` bursts: ``--burst-size`` jobs of mixed sizes and step counts, in a shuffled but
seeded order, submitted back to back; the next burst starts when the queue is empty.

For each job: predicted = ``eta_s`` at submit; actual = ``finished_at - created_at``, both
stamped by the server's clock. Relative error = (predicted - actual) / actual; we report the
median and p90 of its absolute value, and its median with sign (the bias: negative means the
server promised too early).

    python benchmarks/eta_accuracy.py --bursts 3 --json docs/figures/eta_accuracy.json
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from pathlib import Path
from typing import Any

import _stats
import httpx
from http_overhead import DEFAULT_CACHE, PROMPT, ServerProcess, follow_job

SIZES = ((256, 256), (320, 320), (384, 256))
STEPS = (4, 8, 12)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bursts", type=int, default=3)
    p.add_argument("--burst-size", type=int, default=12)
    p.add_argument("--seed", type=int, default=1, help="the order of shapes in the bursts")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per server process (OMP_NUM_THREADS); 0 keeps "
                   "torch's default")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--json", type=Path, default=_stats.figures_path("eta_accuracy"),
                   help="where to write the figures (default: %(default)s)")
    return p.parse_args(argv)


def body_for(width: int, height: int, steps: int, seed: int) -> dict[str, Any]:
    return {"prompt": PROMPT, "width": width, "height": height, "steps": steps, "seed": seed}


def summarize_errors(rows: list[dict[str, Any]]) -> dict[str, float]:
    errors = [r["rel_error"] for r in rows]
    absolute = [abs(e) for e in errors]
    return {"jobs": len(rows), "abs_rel_error_median": _stats.median(absolute),
            "abs_rel_error_p90": _stats.quantile(absolute, 0.9),
            "rel_error_median": _stats.median(errors)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from steadygen import __version__
    from steadygen.engine.tiny import ensure_tiny_checkpoint

    ensure_tiny_checkpoint(args.cache_dir)
    rng = random.Random(args.seed)
    shapes = [(w, h, s) for (w, h) in SIZES for s in STEPS]
    rows: list[dict[str, Any]] = []
    server_process = ServerProcess(args.cache_dir, ["--concurrency", "1"], threads=args.threads)
    with server_process as server, httpx.Client(base_url=server.url, timeout=600) as client:
        for w, h, s in shapes:  # warm-up: a baseline for every shape
            r = client.post("/v1/jobs", json=body_for(w, h, s, 0))
            r.raise_for_status()
            follow_job(client, r.json()["id"])
        for burst in range(args.bursts):
            plan = [shapes[rng.randrange(len(shapes))] for _ in range(args.burst_size)]
            accepted = []
            for k, (w, h, s) in enumerate(plan):
                r = client.post("/v1/jobs", json=body_for(w, h, s, 100 * burst + k))
                r.raise_for_status()
                accepted.append(r.json())
            for job in accepted:
                follow_job(client, job["id"])
            for k, job in enumerate(accepted):
                done = client.get(f"/v1/jobs/{job['id']}").json()
                actual = done["finished_at"] - done["created_at"]
                rows.append({
                    "burst": burst, "index": k, "position": job["position"],
                    "size": f"{done['request']['width']}x{done['request']['height']}",
                    "steps": done["request"]["steps"], "predicted_s": job["eta_s"],
                    "actual_s": actual, "rel_error": (job["eta_s"] - actual) / actual,
                })

    overall = summarize_errors(rows)
    half = args.burst_size // 2
    front = summarize_errors([r for r in rows if r["index"] < half])
    back = summarize_errors([r for r in rows if r["index"] >= half])
    print(f"ETA accuracy, tiny model on CPU, {args.bursts} bursts of {args.burst_size} jobs "
          f"(sizes {', '.join(f'{w}x{h}' for w, h in SIZES)}; steps {STEPS}), after one "
          f"warm-up job per shape")
    print(f"  {'jobs':<26} {'n':>4} {'|err| p50':>10} {'|err| p90':>10} {'bias p50':>9}")
    for label, f in (("all", overall), (f"first {half} of each burst", front),
                     (f"last {args.burst_size - half} of each burst", back)):
        print(f"  {label:<26} {f['jobs']:>4.0f} {f['abs_rel_error_median']:>10.1%} "
              f"{f['abs_rel_error_p90']:>10.1%} {f['rel_error_median']:>+9.1%}")
    payload = {
        "benchmark": "eta_accuracy",
        "command": _stats.command_line(),
        "params": {"bursts": args.bursts, "burst_size": args.burst_size,
                   "seed": args.seed, "sizes": [f"{w}x{h}" for w, h in SIZES],
                   "steps": list(STEPS), "torch_threads": args.threads or "default",
                   "model": "zimage-tiny", "device": "cpu"},
        "machine": _stats.machine_info(),
        "versions": {"steadygen": __version__},
        "overall": overall, "first_half": front, "second_half": back,
        "jobs": rows,
    }
    written = _stats.write_figures(args.json, "eta_accuracy", payload)
    print(f"  wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
