"""What the telemetry sampler costs: its own CPU time, and its effect on generation time.

1. Sampler CPU: run the sampler alone for ``--seconds`` at each rate and read its thread's
   CPU time (``time.thread_time`` inside the thread, via ``Sampler.stats()``): CPU seconds
   per second of wall time, and per sample.
2. Generation (needs ``steadygen.engine.engine``): the tiny model on the CPU, sampler off /
   10 Hz / 50 Hz interleaved (ABC ABC ..., warm-up excluded); medians and ratios to "off".

    python benchmarks/sampler_overhead.py --seconds 10 --pairs 30 --steps 8 --size 256x256

writes docs/figures/sampler_overhead.json (``--json`` elsewhere).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _stats

from steadygen.telemetry import Sampler

RATES_HZ = (10.0, 50.0)


def sampler_cpu(rate_hz: float, seconds: float) -> dict[str, Any]:
    """Run the sampler alone; its thread's CPU seconds per wall second."""
    sampler = Sampler(interval_s=1.0 / rate_hz)
    t0 = time.monotonic()
    sampler.start()
    time.sleep(seconds)
    stats = sampler.stats()
    wall = time.monotonic() - t0
    sampler.stop()
    return {
        "rate_hz": rate_hz,
        "gpu_backend": sampler.gpu_backend_name,
        "wall_s": round(wall, 3),
        "samples": stats.ticks,
        "late_ticks": stats.late_ticks,
        "errors": stats.errors,
        "cpu_s": round(stats.thread_cpu_s, 4),
        "cpu_s_per_s": round(stats.thread_cpu_s / wall, 5),
        "cpu_ms_per_sample": round(1000 * stats.thread_cpu_s / max(1, stats.ticks), 3),
    }


def _engine_and_request(size: str, steps: int) -> tuple[Any, Any] | None:
    try:
        from steadygen.config import Limits
        from steadygen.engine.engine import Engine
        from steadygen.request import validate_request
    except ImportError as exc:
        print(f"engine not available ({exc}); sampler CPU figures only", file=sys.stderr)
        return None
    width, height = (int(v) for v in size.lower().split("x"))
    cache = Path(tempfile.gettempdir()) / "steadygen-bench-cache"
    engine = Engine.create(model="zimage-tiny", device="cpu", cache_dir=cache)
    engine.load()
    request = validate_request(
        {"prompt": "a lighthouse at dusk", "width": width, "height": height, "steps": steps,
         "seed": 1},
        limits=Limits(), models=["zimage-tiny"], default_model="zimage-tiny",
    )
    return engine, request


def generation_overhead(pairs: int, size: str, steps: int, warmup: int) -> dict[str, Any] | None:
    """Generation seconds with the sampler off, at 10 Hz and at 50 Hz, interleaved."""
    made = _engine_and_request(size, steps)
    if made is None:
        return None
    engine, request = made
    modes: list[float] = [0.0, *RATES_HZ]
    times: dict[float, list[float]] = {m: [] for m in modes}
    cpu: dict[float, list[float]] = {m: [] for m in modes}  # process CPU, less the sampler's
    with tempfile.TemporaryDirectory() as out:
        for _ in range(warmup):
            engine.generate(request, save_dir=Path(out))
        for i in range(pairs):
            # Rotate the order so no mode always runs first after a switch.
            for mode in modes[i % len(modes):] + modes[: i % len(modes)]:
                sampler = Sampler(interval_s=0 if mode == 0 else 1.0 / mode)
                sampler.start()
                try:
                    c0, t0 = time.process_time(), time.perf_counter()
                    engine.generate(request, save_dir=Path(out))
                    times[mode].append(time.perf_counter() - t0)
                    c1 = time.process_time()
                finally:
                    sampler.stop()
                cpu[mode].append(c1 - c0 - sampler.stats().thread_cpu_s)
    base = statistics.median(times[0.0])
    return {
        "size": size,
        "steps": steps,
        "pairs": pairs,
        "warmup": warmup,
        "median_s": {_label(m): round(statistics.median(v), 4) for m, v in times.items()},
        "ratio_to_off": {_label(m): round(statistics.median(v) / base, 4)
                         for m, v in times.items()},
        # Each round's mode over that round's "off", then the median: robust to slow drift.
        "paired_ratio_median": {
            _label(m): round(statistics.median(a / b for a, b in zip(v, times[0.0], strict=True)),
                             4)
            for m, v in times.items()
        },
        "median_engine_cpu_s": {_label(m): round(statistics.median(v), 4)
                                for m, v in cpu.items()},
        "raw_s": {_label(m): [round(x, 4) for x in v] for m, v in times.items()},
    }


def _label(mode: float) -> str:
    return "off" if mode == 0 else f"{mode:g}Hz"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=6, help="interleaved rounds (default 6)")
    parser.add_argument("--size", default="256x256", help="WxH for generation (default 256x256)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="sampler-only run per rate (default 10)")
    parser.add_argument("--no-generate", action="store_true", help="sampler CPU figures only")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="OMP_NUM_THREADS for the CPU engine, unless already set (default "
                             "1: torch's spinning workers make a shared CPU very noisy)")
    parser.add_argument("--json", dest="json_out", type=Path,
                        default=_stats.figures_path("sampler_overhead"),
                        help="where to write the figures (default: %(default)s)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.torch_threads))  # before torch loads

    result: dict[str, Any] = {
        "params": {"seconds": args.seconds, "rates_hz": list(RATES_HZ), "pairs": args.pairs,
                   "size": args.size, "steps": args.steps, "warmup": args.warmup,
                   "model": "zimage-tiny", "device": "cpu"},
        "sampler_cpu": [sampler_cpu(r, args.seconds) for r in RATES_HZ],
    }
    logging.getLogger("steadygen.telemetry").setLevel(logging.ERROR)  # said once already
    print(f"{'rate':>6} {'backend':>10} {'samples':>8} {'late':>5} {'CPU s/s':>9} "
          f"{'CPU ms/sample':>14}")
    for row in result["sampler_cpu"]:
        print(f"{row['rate_hz']:>5g}Hz {row['gpu_backend']:>10} {row['samples']:>8} "
              f"{row['late_ticks']:>5} {row['cpu_s_per_s']:>9.4f} "
              f"{row['cpu_ms_per_sample']:>14.3f}")
    if not args.no_generate:
        gen = generation_overhead(args.pairs, args.size, args.steps, args.warmup)
        result["generation"] = gen
        if gen is not None:
            print(f"\ngeneration {gen['size']}, {gen['steps']} steps, {gen['pairs']} rounds "
                  f"(warm-up {gen['warmup']} excluded)")
            print(f"{'sampler':>8} {'median s':>9} {'ratio':>7} {'paired ratio':>13} "
                  f"{'engine CPU s':>13}")
            for label, med in gen["median_s"].items():
                print(f"{label:>8} {med:>9.4f} {gen['ratio_to_off'][label]:>7.4f} "
                      f"{gen['paired_ratio_median'][label]:>13.4f} "
                      f"{gen['median_engine_cpu_s'][label]:>13.4f}")
    print(f"wrote {_stats.write_figures(args.json_out, 'sampler_overhead', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
