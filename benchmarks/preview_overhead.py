"""What live previews cost per denoising step, on the tiny model.

Each round generates the same request three times, interleaved (off, every, budget, ...):
  off     the step callback the job worker always has, doing nothing else;
  every   the callback also makes a preview at every step (``Engine.preview`` on the step's
          latents: the fitted latent->RGB map, 2x upscale, JPEG) and base64-encodes it;
  budget  as the worker ships it: a preview while previews so far took at most 2 % of the
          steps so far (``PreviewBudget``; the first step always gets one).
Per round it records each step's time (the engine's host step time, the callback left out),
each preview's time, and the denoising loop's wall time per step (steps and callbacks
together). Figures are medians over the timed rounds, warm-up rounds excluded:
  preview cost    median preview time / median step time of the same round ("every");
  cost per step   previews x their median time / steps x their median time, all rounds
                  pooled ("every" and "budget"; target <= 2 %); for "budget" also as the
                  rounds' plain sums, which keep the moments the shared machine preempted
                  the process;
  loop slowdown   median per-round ratio of the loop's time per step, to "off".
Previews off cost nothing by construction (no call is made).

    python benchmarks/preview_overhead.py --pairs 20 --sizes 256x256,512x512
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _stats

TARGET_COST = 0.02
PROMPT = "a lighthouse at dusk"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=20, help="timed rounds (at least 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    p.add_argument("--sizes", default="256x256,512x512", help="comma-separated WxH")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--cache-dir", type=Path, help="where the tiny checkpoint is built")
    p.add_argument("--json", type=Path, default=_stats.figures_path("preview_overhead"),
                   help="write the figures here")
    args = p.parse_args(argv)
    if args.pairs < 10:
        p.error("--pairs must be at least 10 for a median worth reporting")
    return args


def measure_size(engine: Any, req: Any, pairs: int, warmup: int) -> dict[str, Any]:
    from steadygen.engine.preview import PreviewBudget

    rounds: dict[str, list[dict[str, Any]]] = {"off": [], "every": [], "budget": []}

    def run(mode: str) -> dict[str, Any]:
        previews_s: list[float] = []
        sizes: list[int] = []
        budget = PreviewBudget()

        def make(latents: Any) -> bytes:
            t0 = time.perf_counter()
            jpeg = engine.preview(latents)
            base64.b64encode(jpeg).decode("ascii")
            previews_s.append(time.perf_counter() - t0)
            sizes.append(len(jpeg))
            return jpeg

        def on_step(p: Any) -> None:
            if mode == "every":
                make(p.latents)
            elif mode == "budget":
                budget.maybe(p.step_s, lambda: make(p.latents))

        timings = engine.generate(req, on_step=on_step, save_dir=None).timings
        loop_s = sum(timings.steps_s) + timings.callbacks_s
        return {"steps_s": list(timings.steps_s), "previews_s": previews_s,
                "loop_per_step_s": loop_s / req.steps, "jpeg_bytes": sizes}

    for k in range(warmup + pairs):
        for mode in rounds:
            result = run(mode)
            if k >= warmup:
                rounds[mode].append(result)

    every, budget, off = rounds["every"], rounds["budget"], rounds["off"]
    raw = [_stats.median(r["previews_s"]) / _stats.median(r["steps_s"]) for r in every]
    spent_sum = [sum(r["previews_s"]) / sum(r["steps_s"]) for r in budget]
    loop_of = {m: [r["loop_per_step_s"] for r in rounds[m]] for m in rounds}
    return {
        "step_s": _stats.describe([_stats.median(r["steps_s"]) for r in off]),
        "preview_s": _stats.describe([_stats.median(r["previews_s"]) for r in every]),
        "preview_cost_every_step": _stats.describe(raw),
        "cost_per_step_every": _pooled_cost(every),
        "cost_per_step_budget": _pooled_cost(budget),
        "cost_per_step_budget_by_sums": _stats.describe(spent_sum),
        "steps_with_preview_budget": sum(len(r["previews_s"]) for r in budget)
        / sum(len(r["steps_s"]) for r in budget),
        "loop_ratio_every_off": _stats.describe(_stats.ratios(loop_of["every"], loop_of["off"])),
        "loop_ratio_budget_off": _stats.describe(
            _stats.ratios(loop_of["budget"], loop_of["off"])),
        "jpeg_bytes_median": _stats.median([b for r in every for b in r["jpeg_bytes"]]),
        "rounds": rounds,
    }


def _pooled_cost(rounds: list[dict[str, Any]]) -> float:
    """Preview time over step time, all timed rounds pooled: previews x their median
    duration / steps x their median duration (medians: a preview or a step the shared
    machine preempted does not decide the figure; a round holds too few previews for a
    median of its own)."""
    previews = [x for r in rounds for x in r["previews_s"]]
    steps = [x for r in rounds for x in r["steps_s"]]
    if not previews:
        return 0.0
    return len(previews) * _stats.median(previews) / (len(steps) * _stats.median(steps))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import diffusers
    import torch

    from steadygen import __version__
    from steadygen.config import Limits
    from steadygen.engine.engine import Engine
    from steadygen.engine.models import TINY
    from steadygen.request import validate_request

    if args.threads:
        torch.set_num_threads(args.threads)
    cache_dir = args.cache_dir or Path(tempfile.gettempdir()) / "steadygen-bench-cache"
    engine = Engine.create(model=TINY, device="cpu", cache_dir=cache_dir)
    engine.load()
    results: dict[str, Any] = {}
    print(f"preview overhead, tiny model, {args.steps} steps, CPU, {torch.get_num_threads()} "
          f"torch threads, {args.pairs} rounds after {args.warmup} warm-up")
    for size in args.sizes.split(","):
        width, height = (int(v) for v in size.lower().split("x"))
        req = validate_request(
            {"prompt": PROMPT, "width": width, "height": height, "steps": args.steps,
             "seed": 1, "preview": True},
            limits=Limits(), models=[TINY], default_model=TINY)
        r = results[size] = measure_size(engine, req, args.pairs, args.warmup)
        raw, sums = r["preview_cost_every_step"], r["cost_per_step_budget_by_sums"]
        print(f"  {size}: step {_stats.ms(r['step_s']['median'])}, preview "
              f"{_stats.ms(r['preview_s']['median'])} ({r['jpeg_bytes_median']:.0f} B)\n"
              f"    every step: {100 * r['cost_per_step_every']:.2f} % of the step time "
              f"(per round IQR {100 * raw['p25']:.2f}-{100 * raw['p75']:.2f}), loop x"
              f"{r['loop_ratio_every_off']['median']:.3f}\n"
              f"    budget: {100 * r['cost_per_step_budget']:.2f} % (by sums, median round "
              f"{100 * sums['median']:.2f} %), previews on "
              f"{100 * r['steps_with_preview_budget']:.0f} % of steps, loop x"
              f"{r['loop_ratio_budget_off']['median']:.3f}")
    worst = max(r["cost_per_step_budget"] for r in results.values())
    verdict = "meets" if worst <= TARGET_COST else "MISSES"
    print(f"  worst cost per step (budget) {100 * worst:.2f} %: {verdict} the target of "
          f"{100 * TARGET_COST:.0f} %")
    if args.json:
        payload = {
            "benchmark": "preview_overhead",
            "command": _stats.command_line(),
            "params": {"sizes": args.sizes, "steps": args.steps, "pairs": args.pairs,
                       "warmup": args.warmup, "torch_threads": torch.get_num_threads(),
                       "device": "cpu", "model": TINY},
            "machine": {**_stats.machine_info(),
                        "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
            "versions": {"steadygen": __version__, "torch": torch.__version__,
                         "diffusers": diffusers.__version__},
            "target_cost_per_step": TARGET_COST,
            "meets_target": worst <= TARGET_COST,
            "sizes": results,
        }
        print(f"  wrote {_stats.write_json(args.json, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
