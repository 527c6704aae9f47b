"""Record a real NVML trace of full-size Z-Image-Turbo generations, for telemetry tests.

    python benchmarks/gpu/record_trace.py --out OUTDIR            # CUDA + NVML
    python benchmarks/gpu/record_trace.py --reduced --out OUTDIR  # CPU: host fields only

steadygen's Sampler polls at 20 Hz while steadygen's engine (default options: attention
auto, no compile) runs a cold first job and then a few warm ones of the full-size
architecture with random bf16 weights at 1024x1024, 8 steps, with idle gaps between them.
Writes OUT/nvml_trace.json: every Sample.to_dict(), the per-job telemetry window summaries
(counter deltas: energy, throttle time), and marks on the same monotonic clock (job start and
end, phase ends, each step's end), so a test can cut the samples by phase and step. Windows
follow one edge rule, half-open: a sample belongs to a job, phase or step when
``start <= t_mono < end`` (``steadygen.telemetry.window.in_window``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
if str(HERE.parents[1]) not in sys.path:
    sys.path.insert(1, str(HERE.parents[1]))

import zimage_arch as za  # noqa: E402

SCHEMA = "steadygen.nvml_trace/1"
PHASE_MARKS = ("encode_end", "prepare_end", "denoise_end", "decode_end", "end")


def job_marks(job_id: str, timings: Any) -> list[dict[str, Any]]:
    m = timings.marks
    marks = [{"t_mono": m["start"], "kind": "job_start", "job": job_id}]
    marks += [{"t_mono": t, "kind": "step_end", "job": job_id, "step": k + 1}
              for k, t in enumerate(timings.step_ends)]
    marks += [{"t_mono": m[name], "kind": "phase_end", "job": job_id, "phase": name}
              for name in PHASE_MARKS if name in m]
    return sorted(marks, key=lambda x: x["t_mono"])


def dumps(doc: dict[str, Any]) -> str:
    """Indented JSON with one sample per line: readable, diffable, not bloated."""
    head = json.dumps({k: v for k, v in doc.items() if k != "samples"}, indent=1)
    rows = ",\n".join("  " + json.dumps(s, separators=(",", ":")) for s in doc["samples"])
    return head[:-2] + ',\n "samples": [\n' + rows + "\n ]\n}\n"


def run(args: argparse.Namespace) -> int:
    import torch

    from steadygen.engine.engine import Engine
    from steadygen.engine.models import ModelSpec
    from steadygen.engine.speed import EngineOptions, apply_options
    from steadygen.request import GenerationRequest
    from steadygen.telemetry.sampler import Sampler

    cuda = torch.cuda.is_available() and not args.reduced
    if not cuda and not args.reduced:
        print("record_trace.py needs a CUDA GPU with NVML for a GPU trace; none here. "
              "Use --reduced for a host-only trace of the toy model on the CPU.", flush=True)
        return 2
    device = "cuda" if cuda else "cpu"
    arch = za.FULL if cuda else za.REDUCED
    size = args.size or (1024 if cuda else 128)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    print(f"building the {arch.name} architecture on {device}", flush=True)
    built = za.build_pipeline(arch, device, torch.bfloat16)
    spec = ModelSpec(name=f"zimage-{arch.name}-random", kind="local", source="",
                     description="Z-Image-Turbo architecture, random bf16 weights",
                     default_side=size, needs_cuda=False, noise_only=True)
    engine = Engine(spec, device, Path(tempfile.mkdtemp(prefix="sg-trace-")), EngineOptions())
    engine.pipe = built.pipe
    engine.applied = apply_options(built.pipe, engine.options, device)
    engine.load_s = built.seconds

    sampler = Sampler(interval_s=1.0 / args.hz, enable_gpu=cuda, process_every_s=1.0)
    static = [s.to_dict() for s in sampler.static_info()]
    sampler.start()
    jobs: list[dict[str, Any]] = []
    marks: list[dict[str, Any]] = []
    try:
        time.sleep(args.idle_s)  # the idle GPU before the first job
        for k in range(args.jobs + 1):
            job_id = "cold" if k == 0 else f"warm-{k}"
            req = GenerationRequest(
                prompt=za.prompt(k), width=size, height=size, steps=args.steps,
                guidance=0.0, seed=k, n=1, model=spec.name,
            )
            mark = sampler.begin_job(job_id)
            result = engine.generate(req)
            window = sampler.end_job(mark)
            timings = result.timings
            jobs.append({
                "job_id": job_id, "t_start": window.t_start, "t_end": window.t_end,
                "first_of_shape": timings.first_of_shape,
                "timings": timings.to_dict(), "window": window.summary(),
            })
            marks += job_marks(job_id, timings)
            print(f"  {job_id}: {timings.total_s:.2f} s, {len(window.samples)} samples",
                  flush=True)
            time.sleep(args.idle_s)
    finally:
        samples = sampler.samples_between(0.0, float("inf"))
        stats = sampler.stats()
        sampler.stop()
    doc = {
        "schema": SCHEMA,
        "mode": "gpu" if cuda else "host-only",
        "interval_s": 1.0 / args.hz,
        "gpu_backend": sampler.gpu_backend_name,
        "gpu_status_reason": sampler.gpu_status_reason,
        "static": static,
        "env": {"torch": torch.__version__, "device": device,
                "gpu": torch.cuda.get_device_name(0) if cuda else None,
                "versions": engine.versions()},
        "request": {"width": size, "height": size, "steps": args.steps, "guidance": 0.0,
                    "arch": arch.name, "options": engine.options_summary()},
        "sampler": {"ticks": stats.ticks, "errors": stats.errors, "late_ticks": stats.late_ticks,
                    "thread_cpu_s": stats.thread_cpu_s},
        "jobs": jobs,
        "marks": marks,
        "samples": [s.to_dict() for s in samples],
    }
    path = out_dir / "nvml_trace.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(dumps(doc))
    os.replace(tmp, path)
    print(f"wrote {path}: {len(samples)} samples, {len(jobs)} jobs, "
          f"{time.monotonic() - t0:.1f} s", flush=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "benchmark-out"))
    p.add_argument("--reduced", action="store_true", help="toy model on the CPU, host only")
    p.add_argument("--jobs", type=int, default=3, help="warm jobs after the cold one")
    p.add_argument("--hz", type=float, default=20.0)
    p.add_argument("--idle-s", type=float, default=1.0, help="idle gap before and after jobs")
    p.add_argument("--size", type=int)
    p.add_argument("--steps", type=int, default=8)
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(run(parse_args()))
