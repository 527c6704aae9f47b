"""What a live preview costs per denoising step, on the tiny model.

Each round generates the same request twice, interleaved (off, on, off, on, ...):
  off  the step callback the job worker always has, doing nothing else;
  on   the callback also makes the preview the worker sends (``Engine.preview`` on the
       step's latents: the fitted latent->RGB map, 2x upscale, JPEG) and base64-encodes it.
Per round it records each step's time (the engine's host step time, the callback left out),
each preview's time, and the denoising loop's wall time per step (steps and callbacks
together). Figures are medians over the timed rounds, warm-up rounds excluded:
  cost per step   median preview time / median step time of the same round (target <= 2 %);
  loop slowdown   median per-round ratio of the loop's time per step, on / off.
Previews off cost nothing by construction (no call is made); the loop ratio shows the
rest of the callback path is unchanged.

    python benchmarks/preview_overhead.py --pairs 20 --sizes 256x256,512x512 \\
        --json docs/figures/preview_overhead.json
"""

from __future__ import annotations

import argparse
import base64
import logging
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
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    if args.pairs < 10:
        p.error("--pairs must be at least 10 for a median worth reporting")
    return args


def measure_size(engine: Any, req: Any, pairs: int, warmup: int) -> dict[str, Any]:
    rounds: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}

    def run(with_preview: bool) -> dict[str, Any]:
        previews_s: list[float] = []
        sizes: list[int] = []

        def on_step(p: Any) -> None:
            if with_preview and p.latents is not None:
                t0 = time.perf_counter()
                jpeg = engine.preview(p.latents)
                base64.b64encode(jpeg).decode("ascii")
                previews_s.append(time.perf_counter() - t0)
                sizes.append(len(jpeg))

        timings = engine.generate(req, on_step=on_step, save_dir=None).timings
        loop_s = sum(timings.steps_s) + timings.callbacks_s
        return {"steps_s": list(timings.steps_s), "previews_s": previews_s,
                "loop_per_step_s": loop_s / req.steps, "jpeg_bytes": sizes}

    for k in range(warmup + pairs):
        off, on = run(False), run(True)
        if k >= warmup:
            rounds["off"].append(off)
            rounds["on"].append(on)

    cost = [_stats.median(r["previews_s"]) / _stats.median(r["steps_s"]) for r in rounds["on"]]
    loop = _stats.ratios([r["loop_per_step_s"] for r in rounds["on"]],
                         [r["loop_per_step_s"] for r in rounds["off"]])
    return {
        "step_s": _stats.describe([_stats.median(r["steps_s"]) for r in rounds["on"]]),
        "step_s_off": _stats.describe([_stats.median(r["steps_s"]) for r in rounds["off"]]),
        "preview_s": _stats.describe([_stats.median(r["previews_s"]) for r in rounds["on"]]),
        "cost_per_step": _stats.describe(cost),
        "loop_ratio_on_off": _stats.describe(loop),
        "jpeg_bytes_median": _stats.median([b for r in rounds["on"] for b in r["jpeg_bytes"]]),
        "rounds": rounds,
    }


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
        c, lr = r["cost_per_step"], r["loop_ratio_on_off"]
        print(f"  {size}: step {_stats.ms(r['step_s']['median'])}, preview "
              f"{_stats.ms(r['preview_s']['median'])} ({r['jpeg_bytes_median']:.0f} B): "
              f"cost per step {100 * c['median']:.2f} % (IQR {100 * c['p25']:.2f}-"
              f"{100 * c['p75']:.2f}); loop on/off {lr['median']:.3f} "
              f"(IQR {lr['p25']:.3f}-{lr['p75']:.3f})")
    worst = max(r["cost_per_step"]["median"] for r in results.values())
    verdict = "meets" if worst <= TARGET_COST else "MISSES"
    print(f"  worst cost per step {100 * worst:.2f} %: {verdict} the target of "
          f"{100 * TARGET_COST:.0f} %")
    if args.json:
        payload = {
            "benchmark": "preview_overhead",
            "command": _stats.command_line(),
            "params": {"sizes": args.sizes, "steps": args.steps, "pairs": args.pairs,
                       "warmup": args.warmup, "torch_threads": torch.get_num_threads(),
                       "device": "cpu", "model": TINY},
            "machine": _stats.machine_info(),
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
