"""What the steadygen engine adds over a plain diffusers call, on the tiny model.

The same request goes through
  plain          ZImagePipeline loaded from the tiny checkpoint directory, called as
                 ``pipe(prompt, height, width, num_inference_steps, guidance_scale=0.0,
                 generator)``, PIL output, nothing saved;
  engine         ``Engine.generate(req, save_dir=None)`` as the server runs it (phase and step
                 timing, step callback, text-encoder cache on: a repeated prompt skips
                 encoding);
  engine-nocache the same with the prompt cache off, so both sides encode every time: the
                 engine's bookkeeping alone.
Variants run interleaved (plain, engine, engine-nocache, plain, ...), warm-up rounds
excluded; the figures are medians and the median of per-round ratios to plain. Target: the
engine's ratio at most 1.03.

    python benchmarks/engine_overhead.py --pairs 30 --json docs/figures/engine_overhead.json
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import _stats

TARGET_RATIO = 1.03
PROMPT = "a lighthouse at dusk"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=20, help="timed rounds (at least 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    p.add_argument("--size", default="256x256")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads; 0 keeps torch's default. One by default: the tiny model "
        "gains nothing from more, and spinning worker threads on a shared CPU add noise",
    )
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: perf_counter; cpu: this process's CPU time, steadier on a busy machine",
    )
    p.add_argument("--cache-dir", type=Path, help="where the tiny checkpoint is built")
    p.add_argument("--json", type=Path, default=_stats.figures_path("engine_overhead"),
                   help="where to write the figures (default: %(default)s)")
    args = p.parse_args(argv)
    if args.pairs < 10:
        p.error("--pairs must be at least 10 for a median worth reporting")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import diffusers
    import numpy as np
    import torch
    import transformers
    from diffusers import ZImagePipeline

    from steadygen import __version__
    from steadygen.config import Limits
    from steadygen.engine.engine import Engine
    from steadygen.engine.models import TINY
    from steadygen.engine.speed import EngineOptions
    from steadygen.engine.tiny import ensure_tiny_checkpoint
    from steadygen.request import validate_request

    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.lower().split("x"))
    cache_dir = args.cache_dir or Path(tempfile.gettempdir()) / "steadygen-bench-cache"
    checkpoint = ensure_tiny_checkpoint(cache_dir)

    engine = Engine.create(model=TINY, device="cpu", cache_dir=cache_dir)
    engine.load()
    nocache = Engine.create(
        model=TINY, device="cpu", cache_dir=cache_dir, options=EngineOptions(prompt_cache_size=0)
    )
    nocache.load()
    pipe = ZImagePipeline.from_pretrained(checkpoint, dtype=torch.float32, local_files_only=True)
    pipe.to("cpu")
    pipe.set_progress_bar_config(disable=True)  # the engine's is off too

    req = validate_request(
        {"prompt": PROMPT, "width": width, "height": height, "steps": args.steps,
         "guidance": 0.0, "seed": args.seed},
        limits=Limits(), models=[TINY], default_model=TINY,
    )  # fmt: skip

    def run_plain() -> Any:
        generator = torch.Generator(device="cpu").manual_seed(args.seed)
        return pipe(
            PROMPT,
            height=height,
            width=width,
            num_inference_steps=args.steps,
            guidance_scale=0.0,
            generator=generator,
            output_type="pil",
        ).images[0]

    engine_phases: list[dict[str, float]] = []

    def run_engine() -> Any:
        result = engine.generate(req, save_dir=None)
        engine_phases.append(result.timings.phases())
        return result.images[0]

    def run_nocache() -> Any:
        return nocache.generate(req, save_dir=None).images[0]

    # The three produce the same image, so the comparison is like for like: equal to the
    # last bit, or (the engine encodes the prompt at its true length, not padded to 512
    # tokens) within one level of rounding per pixel.
    same = {}
    for name, fn in (("engine", run_engine), ("engine-nocache", run_nocache)):
        ours, theirs = (np.asarray(x).astype(np.int16) for x in (fn(), run_plain()))
        diff = np.abs(ours - theirs)
        same[name] = {"max_level_difference": int(diff.max()),
                      "pixels_differing": float((diff > 0).mean()),
                      "same": bool(diff.max() <= 1)}

    variants = {"plain": run_plain, "engine": run_engine, "engine-nocache": run_nocache}
    clock = _stats.cpu_timed if args.clock == "cpu" else _stats.timed
    times = _stats.interleave(variants, rounds=args.pairs, warmup=args.warmup, clock=clock)
    summary = _stats.summarize(times, baseline="plain")
    timed_phases = engine_phases[-args.pairs :]
    phase_medians = {
        k: statistics.median(p[k] for p in timed_phases) for k in timed_phases[0] if k != "queue"
    }

    print(f"engine overhead, tiny model {args.size}, {args.steps} steps, CPU, "
          f"{torch.get_num_threads()} torch threads, {args.clock} clock, {args.pairs} rounds "
          f"after {args.warmup} warm-up")  # fmt: skip
    print(f"  same image as plain: {same}")
    for name, entry in summary["variants"].items():
        line = f"  {name:<15} median {_stats.ms(entry['seconds']['median'])}"
        if "ratio_to_baseline" in entry:
            r = entry["ratio_to_baseline"]
            line += (
                f"   ratio to plain: median {r['median']:.3f} (IQR {r['p25']:.3f}-{r['p75']:.3f})"
            )
        print(line)
    print("  engine phases (median): " + ", ".join(
        f"{k} {_stats.ms(v)}" for k, v in phase_medians.items() if v > 0
    ))  # fmt: skip
    ratio = summary["variants"]["engine"]["ratio_to_baseline"]["median"]
    verdict = "meets" if ratio <= TARGET_RATIO else "MISSES"
    print(f"  engine/plain {ratio:.3f}: {verdict} the target of {TARGET_RATIO}")

    payload = {
        "benchmark": "engine_overhead",
        "command": _stats.command_line(),
        "params": {
            "size": args.size,
            "steps": args.steps,
            "pairs": args.pairs,
            "warmup": args.warmup,
            "torch_threads": torch.get_num_threads(),
            "clock": args.clock,
            "device": "cpu",
            "model": TINY,
        },
        "machine": _stats.machine_info(),
        "versions": {
            "steadygen": __version__,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        },
        "same_image_as_plain": same,
        "summary": summary,
        "engine_phase_medians_s": phase_medians,
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO,
        "times_s": times,
    }
    written = _stats.write_figures(args.json, "engine_overhead", payload)
    print(f"  wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
