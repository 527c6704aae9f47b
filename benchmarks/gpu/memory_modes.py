"""The memory modes on the benchmark's weights: each mode's peak VRAM and the seconds it
spends moving weights (``offload_s``), measured last (low stores the transformer in float8
in place).

Per mode, two generations with different prompts: the first puts the models where the mode
keeps them between jobs, the second is the steady state (a prompt-cache miss, so balanced
moves the text encoder back and forth). The peak is the second job's (the engine resets
the allocator's peak at each job's start) and counts everything allocated in the process,
so the other configurations' extra weights (the FP8 copy, graph pools) are freed first.
"""

from __future__ import annotations

import copy
import gc
from typing import Any

import zimage_arch as za

MODES = ("high", "balanced", "low")
GIB = 2**30


def run_modes(bench: Any, left_s: float, per_run_s: float) -> dict[str, Any]:
    """{mode: {peak_vram_gib, offload_s, total_s, applied}}, or why it was skipped."""
    need = needed_s(per_run_s)
    if left_s < need:
        return {"skipped": f"time budget: {left_s:.0f} s left, about {need:.0f} s needed"}
    free_other_weights(bench)
    out: dict[str, Any] = {"runs_per_mode": 2}
    for mode in MODES:
        engine = make_engine(bench, mode)
        results = [engine.generate(request(bench, engine, i)) for i in range(2)]
        steady = results[-1]
        peak = steady.memory.get("peak_allocated_bytes")
        out[mode] = {
            "peak_vram_gib": None if peak is None else peak / GIB,
            "offload_s": steady.timings.offload_s,
            "offload_phases_s": dict(steady.timings.offload_phases),
            "total_s": steady.timings.total_s,
            "applied": {k: v for k, v in engine.applied.items()
                        if k in ("memory", "memory_reason", "fp8_storage")},
            "where": dict(engine._memory.where),
        }
    return out


def needed_s(per_run_s: float) -> float:
    """Two runs per mode, each with up to ~6 s of weights moving (low, full size)."""
    return len(MODES) * 2 * (per_run_s * 1.5 + 6.0)


def free_other_weights(bench: Any) -> None:
    """Drop what only the other configurations needed: the FP8 copy and captured graphs."""
    import torch

    for runner in bench.graph_runners.values():
        runner.uninstall()
        runner.entries.clear()
    bench.graph_runners.clear()
    for switch in bench.switches.values():
        switch.set(False)
    bench.fp8_transformer = None
    gc.collect()
    if bench.cuda:
        torch.cuda.empty_cache()


def make_engine(bench: Any, mode: str) -> Any:
    from diffusers import ZImagePipeline

    from steadygen.engine import memory
    from steadygen.engine.engine import Engine
    from steadygen.engine.models import ModelSpec
    from steadygen.engine.speed import EngineOptions, set_backend

    options = EngineOptions(attention="sdpa", prompt_cache_size=0, memory=mode)
    spec = ModelSpec(name=f"zimage-{bench.arch.name}-random", kind="local", source="",
                     description="Z-Image-Turbo architecture, random bf16 weights",
                     default_side=bench.args.size, needs_cuda=False, noise_only=True)
    engine = Engine(spec, bench.device, bench.tmp, options)
    parts = dict(bench.pipe.components)
    parts["scheduler"] = copy.deepcopy(bench.pipe.scheduler)
    engine.pipe = ZImagePipeline(**parts)
    engine.pipe.set_progress_bar_config(disable=True)
    set_backend(engine.pipe.transformer, "native")
    plan = memory.plan(mode, memory.device_total_bytes(bench.device))
    engine._memory = memory.Offloader(plan, bench.device, engine._sync)
    if not bench.cuda:  # CPU rehearsal: real .to() calls to a second name for host memory
        engine._memory.offload_device = "cpu:1"
    engine.applied = engine._memory.place(engine.pipe)
    engine.load_s = 0.0
    return engine


def request(bench: Any, engine: Any, i: int) -> Any:
    from steadygen.request import GenerationRequest

    return GenerationRequest(prompt=za.prompt(300 + i), width=bench.args.size,
                             height=bench.args.size, steps=bench.args.steps, guidance=0.0,
                             seed=bench.args.seed, n=1, model=engine.spec.name)
