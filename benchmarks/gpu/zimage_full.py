"""Full-size Z-Image-Turbo on one GPU: plain diffusers against steadygen's speed options.

    python benchmarks/gpu/zimage_full.py --out OUTDIR            # CUDA: full size, 1024x1024
    python benchmarks/gpu/zimage_full.py --reduced --out OUTDIR  # CPU: toy widths, 128x128

One process, one set of random bf16 weights shared by every configuration (FP8 works on a
quantized copy), runs interleaved round-robin so drift and noise hit all alike:

    baseline    plain diffusers as documented: pipe(prompt, 1024, 1024, 8 steps, guidance 0)
    sg-sdpa     steadygen's engine on SDPA, eager, padded prompts (engine overhead; optional)
    sg-eager    engine: attention auto (fastest measured), true-length prompts, tuned VAE
    sg-compile  sg-eager + compiled blocks (static shapes)
    sg-graphs   sg-compile + a CUDA graph per shape (the steady path under a busy host)
    sg-fp8      sg-graphs + torchao FP8 on the big linears (refused below sm89)

Then the fastest exact configuration runs again while a CPU hog spins on every core
(``cpu_hog``), and the JSON gets the top-level ``device`` and ``versions``.

Per configuration: median, p90, p99, CV, per-phase medians (steadygen Timings), peak memory,
compile paid at warm-up (cold start) and during timed runs (should be 0), and the output
latents of one fixed seed compared to the baseline's (relative L2; a speed-up over its
tolerance has failed). Also the FLOPs per image (counted on the meta device), the card's
measured bf16 matrix rate, their quotient (the floor) and each median's distance to it.
Writes OUT/zimage_full.json after every stage and prints a table at the end.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
if str(HERE.parents[1]) not in sys.path:  # the repo root, for steadygen when not installed
    sys.path.insert(1, str(HERE.parents[1]))

import bench_report as br  # noqa: E402
import memory_modes  # noqa: E402
import zimage_arch as za  # noqa: E402

# Relative L2 of the final latents against the baseline's, same seed and weights. Measured on
# the CPU (dim 512, 8 layers, 8 steps, 256x256, random weights): another bf16 attention kernel
# moves the latents by 0.19 %, bf16 against fp32 by 0.25 %, emulated FP8 e4m3 with per-row
# scales by 0.83 %. The full model is deeper and wider, so the bounds leave ~5-10x: a bf16
# reordering (kernel, fusion) must stay within 2 %, FP8 within 10 %. A broken kernel (wrong
# mask, dropped heads, bad scales) lands at 30-140 %.
TOLERANCE = {"bf16": 0.02, "fp8": 0.10}


@dataclass(frozen=True)
class Spec:
    name: str
    label: str
    attention: str  # steadygen's attention option
    compile: bool
    fp8: bool
    engine: bool  # False: plain diffusers
    graphs: bool = False  # a CUDA graph per shape (CPU rehearsal: the eager replay)
    exact: bool = True  # prompts encoded at their true length
    vae: str = "tuned"  # VAE decode: plain | tuned


SPECS = {s.name: s for s in (
    Spec("baseline", "plain diffusers, SDPA, eager (as documented)", "sdpa", False, False, False,
         exact=False, vae="plain"),
    Spec("sg-sdpa", "steadygen engine, SDPA, eager, padded prompts", "sdpa", False, False, True,
         exact=False, vae="plain"),
    Spec("sg-eager", "steadygen: attention auto, true-length prompts, tuned VAE", "auto", False,
         False, True),
    Spec("sg-compile", "sg-eager + compiled blocks (static shapes)", "auto", True, False, True),
    Spec("sg-graphs", "sg-compile + a CUDA graph per shape", "auto", True, False, True,
         graphs=True),
    Spec("sg-fp8", "sg-graphs + FP8 on the big linears", "auto", True, True, True, graphs=True),
)}
DEFAULT_CONFIGS = "baseline,sg-eager,sg-compile,sg-graphs,sg-fp8"
# Preparation order: eager first, the FP8 copy before anything is compiled (a copy taken
# later would carry the compiled forwards), then the bf16 compiled ones (they share one
# compiled block: the second pays no compile).
PREPARE_ORDER = ("baseline", "sg-sdpa", "sg-eager", "sg-fp8", "sg-compile", "sg-graphs")
# When the budget cannot fit the minimum rounds for every configuration, these leave the
# rotation first (their warm-up and correctness stay reported).
DROP_FIRST = ("sg-sdpa", "sg-eager", "sg-compile")
MIN_ROUNDS = 5


class CompileSwitch:
    """Compiled blocks are per-module ``forward`` overrides (speed.enable_compile); setting
    them aside lets a compiled and an eager configuration take turns on the same weights."""

    def __init__(self, transformer: Any):
        import functools

        self.saved = {m: m.__dict__["forward"] for m in transformer.modules()
                      if isinstance(m.__dict__.get("forward"), functools.partial)}

    def set(self, on: bool) -> None:
        for module, fwd in self.saved.items():
            if on:
                module.forward = fwd
            else:
                module.__dict__.pop("forward", None)


class Bench:
    def __init__(self, args: argparse.Namespace, report: br.Report):
        import torch

        self.args = args
        self.report = report
        self.cuda = torch.cuda.is_available() and not args.reduced
        self.device = "cuda" if self.cuda else "cpu"
        self.arch = za.REDUCED if args.reduced else za.FULL
        self.deadline = time.monotonic() + args.budget_s
        self.pipe: Any = None
        self.fp8_transformer: Any = None
        self.fp8_applied = ""
        self.switches: dict[int, CompileSwitch] = {}
        self.graph_runners: dict[int, Any] = {}
        self.ref_latents: Any = None
        self.base_latents: Any = None
        self.base_image: Any = None
        self.tmp = Path(tempfile.mkdtemp(prefix="sg-bench-"))

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def build(self) -> None:
        import torch

        built = za.build_pipeline(self.arch, self.device, torch.bfloat16, seed=self.args.seed)
        self.pipe = built.pipe
        self.report.data["build"] = {"seconds": built.seconds, "params": built.params,
                                     "weight_bytes": built.weight_bytes}

    def fp8_copy(self) -> Any:
        if self.fp8_transformer is None:
            import torch

            from steadygen.engine import speed

            # Measured as allocator growth: a float8 tensor subclass reports its outer dtype.
            before = torch.cuda.memory_allocated() if self.cuda else 0
            t0 = time.monotonic()
            holder = types.SimpleNamespace(transformer=copy.deepcopy(self.pipe.transformer))
            self.fp8_applied = speed.enable_fp8(holder, self.device)
            self.fp8_transformer = holder.transformer
            if self.cuda:
                torch.cuda.synchronize()
            weights = (torch.cuda.memory_allocated() - before) if self.cuda else 0
            self.report.data["build"]["fp8"] = {"seconds": time.monotonic() - t0,
                                                "transformer_weight_bytes": weights}
        return self.fp8_transformer

    def make_engine(self, spec: Spec, transformer: Any, applied: dict[str, Any]) -> Any:
        from diffusers import ZImagePipeline

        from steadygen.engine.engine import Engine
        from steadygen.engine.models import ModelSpec
        from steadygen.engine.speed import EngineOptions

        options = EngineOptions(attention=spec.attention, compile=spec.compile, fp8=spec.fp8,
                                prompt_cache_size=0, compile_backend=self.args.compile_backend,
                                cuda_graphs=spec.graphs, exact_length_prompts=spec.exact,
                                vae_decode=spec.vae)
        model = ModelSpec(name=f"zimage-{self.arch.name}-random", kind="local", source="",
                          description="Z-Image-Turbo architecture, random bf16 weights",
                          default_side=self.args.size, needs_cuda=False, noise_only=True)
        engine = Engine(model, self.device, self.tmp, options)
        parts = dict(self.pipe.components)
        parts["transformer"] = transformer
        parts["scheduler"] = copy.deepcopy(self.pipe.scheduler)
        engine.pipe = ZImagePipeline(**parts)
        engine.pipe.set_progress_bar_config(disable=True)
        engine.applied = dict(applied)
        engine.load_s = 0.0
        engine._graphs = self.graph_runners.get(id(transformer)) if spec.graphs else None
        return engine

    def fp32_reference(self) -> None:
        """The same latents from an fp32 copy of the transformer: how far bf16 itself is."""
        import torch
        from diffusers import ZImagePipeline

        t32 = copy.deepcopy(self.pipe.transformer).to(torch.float32)
        with torch.inference_mode():
            embeds, _ = self.pipe.encode_prompt(za.prompt(0), device=self.device,
                                                do_classifier_free_guidance=False)
            ref = ZImagePipeline(scheduler=copy.deepcopy(self.pipe.scheduler), vae=None,
                                 text_encoder=None, tokenizer=None, transformer=t32)
            ref.set_progress_bar_config(disable=True)
            out = ref(prompt_embeds=[e.float() for e in embeds], height=self.args.size,
                      width=self.args.size, num_inference_steps=self.args.steps,
                      guidance_scale=0.0, output_type="latent",
                      generator=torch.Generator("cpu").manual_seed(self.args.seed))
        self.ref_latents = out.images.float().cpu()
        del t32, ref
        if self.cuda:
            torch.cuda.empty_cache()


# -- the configurations ----------------------------------------------------------------------


class Runner:
    """One configuration: its transformer, attention backend, compile state, and runs."""

    def __init__(self, bench: Bench, spec: Spec):
        self.b = bench
        self.spec = spec
        self.out: dict[str, Any] = {"label": spec.label, "status": "pending",
                                    "options": {"attention": spec.attention,
                                                "compile": spec.compile, "fp8": spec.fp8}}
        self.transformer: Any = None
        self.backend = "native"
        self.compiled = False
        self.engine: Any = None
        self.pipe: Any = None
        self.runs_s: list[float] = []
        self.timings: list[Any] = []
        self.working_bytes = 0
        self.peak_bytes = 0
        self.recompiles_timed = 0
        self.graph_breaks_timed = 0
        self.captures_timed = 0
        self.windows: list[tuple[float, float]] = []

    # preparation ----------------------------------------------------------------------------

    def prepare(self) -> None:
        from steadygen.engine import speed

        b, spec = self.b, self.spec
        applied: dict[str, Any] = {}
        self.transformer = b.pipe.transformer
        if spec.fp8:
            layers = speed.fp8_layers(b.pipe.transformer)
            self.out["fp8_layers"] = {"count": len(layers), "names": layers}
            refusal = speed.fp8_refusal(b.device)
            if refusal is not None:
                self.out.update(status="refused", reason=refusal)
                return
            self.transformer = b.fp8_copy()
            applied["fp8"] = b.fp8_applied
        shape = speed.attention_shape(self.transformer, b.args.size, b.args.size)
        self.backend, applied["attention_reason"] = speed.choose_backend(
            spec.attention, b.device, shape)
        applied["attention_backend"] = self.backend
        speed.set_backend(self.transformer, self.backend)
        if spec.compile:
            key = id(self.transformer)
            if key not in b.switches:
                applied["compile"] = speed.enable_compile(self.transformer, b.args.compile_backend)
                b.switches[key] = CompileSwitch(self.transformer)
            else:
                applied["compile"] = "shares the compiled blocks of another configuration"
            self.compiled = True
        if spec.graphs:
            from steadygen.engine.graphs import GraphRunner

            mode = "cuda" if b.cuda else "eager"
            b.graph_runners.setdefault(id(self.transformer),
                                       GraphRunner(self.transformer, replay_mode=mode))
            applied["cuda_graphs"] = ("one CUDA graph per shape" if b.cuda else
                                      "CPU rehearsal: the graph plumbing with eager replay")
        self.out["applied"] = applied
        if spec.engine:
            self.engine = b.make_engine(spec, self.transformer, applied)
        else:
            self.pipe = b.pipe
        self.out["status"] = "ready"

    def activate(self) -> None:
        from steadygen.engine import speed

        speed.set_backend(self.transformer, self.backend)
        for key, switch in self.b.switches.items():
            if key == id(self.transformer):
                switch.set(self.compiled)
        for key, runner in self.b.graph_runners.items():
            if key == id(self.transformer) and self.spec.graphs:
                if runner._eager is None:
                    runner.install()
            else:
                runner.uninstall()

    # one generation --------------------------------------------------------------------------

    def generate(self, text: str, seed: int, keep_latents: bool = False) -> dict[str, Any]:
        """Run once; seconds from the call to the synchronised end, and what steadygen saw."""
        import torch

        from steadygen.engine import speed

        b = self.b
        self.activate()
        captured: dict[str, Any] = {}
        b.sync()
        before = torch.cuda.memory_allocated() if b.cuda else 0
        if b.cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        m0 = time.monotonic()
        if self.engine is None:
            with speed.CompileWatch() as watch:
                out = self.pipe(
                    text, height=b.args.size, width=b.args.size,
                    num_inference_steps=b.args.steps, guidance_scale=0.0,
                    generator=torch.Generator("cpu").manual_seed(seed),
                    output_type="latent" if keep_latents else "pil",
                )
            b.sync()
            seconds = time.perf_counter() - t0
            result = {"seconds": seconds, "timings": None, "recompiles": watch.count,
                      "compile_s": watch.seconds, "graph_breaks": watch.graph_breaks,
                      "graph_captures": 0, "graph_capture_s": 0.0}
            if keep_latents:
                captured["latents"] = out.images.float().cpu()
        else:
            from steadygen.request import GenerationRequest

            if keep_latents:
                decode = self.engine._decode

                def spy(latents: Any) -> Any:
                    captured["latents"] = latents.float().cpu()
                    return decode(latents)

                self.engine._decode = spy
            try:
                res = self.engine.generate(GenerationRequest(
                    prompt=text, width=b.args.size, height=b.args.size, steps=b.args.steps,
                    guidance=0.0, seed=seed, n=1, model=self.engine.spec.name,
                ))
            finally:
                self.engine.__dict__.pop("_decode", None)
            b.sync()
            seconds = time.perf_counter() - t0
            result = {"seconds": seconds, "timings": res.timings,
                      "recompiles": res.metadata.get("recompiles", 0),
                      "compile_s": res.metadata.get("compile_s", 0.0),
                      "graph_breaks": res.metadata.get("graph_breaks", 0),
                      "graph_captures": res.metadata.get("graph_captures", 0),
                      "graph_capture_s": res.metadata.get("graph_capture_s", 0.0)}
            captured["image"] = res.images[0]
        self.windows.append((m0, time.monotonic()))
        if b.cuda:
            peak = torch.cuda.max_memory_allocated()
            self.peak_bytes = max(self.peak_bytes, peak)
            self.working_bytes = max(self.working_bytes, peak - before)
        result.update(captured)
        return result

    def warm_up(self) -> None:
        runs = []
        cold = {"compiles": 0, "compile_s": 0.0, "graph_breaks": 0, "graph_captures": 0,
                "graph_capture_s": 0.0}
        for i in range(self.b.args.warmup):
            r = self.generate(za.prompt(100 + i), seed=1000 + i)
            runs.append(r["seconds"])
            cold["compiles"] += r["recompiles"]
            for k in ("compile_s", "graph_breaks", "graph_captures", "graph_capture_s"):
                cold[k] += r[k]
        self.out["warmup_runs_s"] = runs
        self.out["cold_start"] = {"first_run_s": runs[0] if runs else None, **cold}

    def timed(self, index: int) -> float:
        b = self.b
        r = self.generate(za.prompt(1 + index), seed=b.args.seed + 1 + index)
        self.runs_s.append(r["seconds"])
        self.recompiles_timed += r["recompiles"]
        self.graph_breaks_timed += r["graph_breaks"]
        self.captures_timed += r["graph_captures"]
        if r["timings"] is not None:
            self.timings.append(r["timings"])
        return r["seconds"]


# -- the bench --------------------------------------------------------------------------------


def check_correctness(bench: Bench, runner: Runner) -> None:
    """Same prompt, seed and weights as the baseline; relative L2 of the final latents."""
    import numpy as np

    r = runner.generate(za.prompt(0), seed=bench.args.seed, keep_latents=True)
    latents = r["latents"]
    if not np.isfinite(latents.numpy()).all():
        runner.out["correctness"] = {"passed": False, "why": "non-finite latents"}
        return
    if runner.spec.name == "baseline":
        bench.base_latents = latents
        bench.base_image = bench_image(bench, latents)
    kind = "fp8" if "fp8" in runner.out.get("applied", {}) and not str(
        runner.out["applied"]["fp8"]).startswith("not applied") else "bf16"
    out: dict[str, Any] = {"kind": kind, "tolerance": TOLERANCE[kind]}
    if bench.base_latents is not None:
        out["latent_rel_l2_vs_baseline"] = br.rel_l2(latents, bench.base_latents)
        image = np.asarray(r["image"]) if "image" in r else bench_image(bench, latents)
        out["image_psnr_db_vs_baseline"] = br.psnr_db(image, bench.base_image)
        out["image_rel_l2_vs_baseline"] = br.rel_l2(image, bench.base_image)
        out["passed"] = out["latent_rel_l2_vs_baseline"] <= TOLERANCE[kind]
        if not out["passed"]:
            out["why"] = (f"latents differ from the baseline's by "
                          f"{out['latent_rel_l2_vs_baseline']:.3g} > {TOLERANCE[kind]}")
    if bench.ref_latents is not None:
        out["latent_rel_l2_vs_fp32"] = br.rel_l2(latents, bench.ref_latents)
    runner.out["correctness"] = out


def bench_image(bench: Bench, latents: Any) -> Any:
    """Decode latents as the engine and the pipeline both do, to uint8 pixels."""
    import numpy as np
    import torch

    pipe = bench.pipe
    with torch.inference_mode():
        x = latents.to(bench.device, pipe.vae.dtype)
        x = x / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        decoded = pipe.vae.decode(x, return_dict=False)[0]
        return np.asarray(pipe.image_processor.postprocess(decoded, output_type="pil")[0])


def env_info(bench: Bench) -> dict[str, Any]:
    import diffusers
    import torch
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "diffusers": diffusers.__version__, "transformers": transformers.__version__,
        "cuda": torch.version.cuda, "device": bench.device,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
    try:
        import torchao

        info["torchao"] = torchao.__version__
    except Exception as exc:  # absent or broken: say which
        info["torchao"] = f"unavailable ({type(exc).__name__})"
    from steadygen.engine.speed import fa3_usable

    info["flash_attn_3"] = fa3_usable()
    if bench.cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, capability=list(torch.cuda.get_device_capability(0)),
                    gpu_memory_bytes=props.total_memory, sm_count=props.multi_processor_count,
                    cudnn=torch.backends.cudnn.version())
        try:
            from steadygen.telemetry.nvml import NvmlBackend

            nv = NvmlBackend()
            info["nvml"] = [s.to_dict() for s in nv.static_info()]
            nv.close()
        except Exception as exc:
            info["nvml"] = f"unavailable: {type(exc).__name__}: {exc}"
    return info


def versions(env: dict[str, Any]) -> dict[str, Any]:
    """What this run ran on, for a result committed as it is."""
    out = {k: env.get(k) for k in ("python", "torch", "cuda", "cudnn", "diffusers",
                                   "transformers", "torchao", "flash_attn_3")}
    nvml = env.get("nvml")
    if isinstance(nvml, list) and nvml:
        out["driver"] = nvml[0].get("driver_version")
    from steadygen import __version__

    out["steadygen"] = __version__
    return out


def summarize_runner(bench: Bench, runner: Runner, base_median: float | None,
                     floor_s: float | None, samples: list[Any]) -> None:
    import statistics

    out = runner.out
    out["runs_s"] = runner.runs_s
    out["stats"] = br.summarize(runner.runs_s)
    out["recompiles_during_timed_runs"] = runner.recompiles_timed
    out["graph_breaks_during_timed_runs"] = runner.graph_breaks_timed
    out["graph_captures_during_timed_runs"] = runner.captures_timed
    if runner.timings:
        phases = {}
        for name in ("encode", "prepare", "steps", "decode", "warmup", "other"):
            phases[name] = statistics.median(t.phases()[name] for t in runner.timings)
        out["phases_median_s"] = phases
        out["step_median_s"] = statistics.median(s for t in runner.timings for s in t.steps_s)
    median = out["stats"].get("median_s")
    if median and base_median:
        out["speedup_vs_baseline"] = base_median / median
    if median and floor_s:
        out["floor_ratio"] = median / floor_s
    if bench.cuda and runner.runs_s:
        build = bench.report.data["build"]
        weights = build["weight_bytes"]
        fp8 = build.get("fp8")  # absent when no FP8 copy was made
        on_fp8 = fp8 is not None and runner.transformer is not None and (
            runner.transformer is bench.fp8_transformer)
        tr = fp8["transformer_weight_bytes"] if on_fp8 else weights["transformer"]
        own = tr + weights["text_encoder"] + weights["vae"]
        out["memory"] = {"peak_allocated_bytes": runner.peak_bytes,
                         "working_bytes": runner.working_bytes, "weights_bytes": own,
                         "standalone_peak_bytes": own + runner.working_bytes}
    headline(out, runner.runs_s)
    mine = [s for s in samples if any(a <= s.t_mono <= z for a, z in runner.windows)]
    if mine:
        out["telemetry"] = telemetry_summary(mine)


def headline(out: dict[str, Any], runs_s: list[float]) -> None:
    """The fields a committed GPU run is read by, at the top of each configuration."""
    stats = out.get("stats", {})
    out["median_s"] = stats.get("median_s")
    out["p99_s"] = stats.get("p99_s")
    out["cv"] = stats.get("cv")
    peak = out.get("memory", {}).get("standalone_peak_bytes")
    out["peak_vram_gib"] = None if peak is None else peak / 2**30
    corr = out.get("correctness", {})
    out["exact"] = corr.get("passed") if "passed" in corr else None
    # the first timed run after warm-up, against the warm median: what the first request
    # after readiness pays (target <= 1.05)
    median = stats.get("median_s")
    out["first_after_ready_ratio"] = runs_s[0] / median if runs_s and median else None


def telemetry_summary(samples: list[Any]) -> dict[str, Any]:
    gpu = [s.gpus[0] for s in samples if s.gpus]

    def stat(field: str) -> dict[str, float] | None:
        vals = [getattr(g, field) for g in gpu if getattr(g, field) is not None]
        return None if not vals else {"mean": sum(vals) / len(vals), "min": min(vals),
                                      "max": max(vals)}

    reasons = sorted({r for g in gpu for r in g.clock_events})
    return {"samples": len(samples), "sm_clock_hz": stat("sm_clock_hz"),
            "power_w": stat("power_w"), "temp_c": stat("temp_c"), "clock_events": reasons}


# -- the run ----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:

    out_dir = Path(args.out)
    report = br.Report(out_dir / "zimage_full.json", {"mode": "reduced" if args.reduced
                                                      else "full"})
    bench = Bench(args, report)
    report.data["settings"] = {
        "width": args.size, "height": args.size, "steps": args.steps, "guidance": 0.0,
        "runs_target": args.runs, "warmup_runs": args.warmup, "seed": args.seed,
        "budget_s": args.budget_s, "compile_backend": args.compile_backend,
        "configs": args.configs, "tolerance_rel_l2": TOLERANCE, "arch": bench.arch.name,
    }
    env = report.data["env"] = env_info(bench)
    report.data["device"] = env.get("gpu") or f"cpu ({platform.machine()}, reduced rehearsal)"
    report.data["versions"] = versions(env)
    report.stage("start", device=bench.device, mode=report.data["mode"])
    try:
        return measure(bench, report, out_dir)
    except BaseException as exc:  # OOM at build, a kill: leave the JSON saying so
        report.data["status"] = "failed"
        report.error("run", exc)
        raise


def measure(bench: Bench, report: br.Report, out_dir: Path) -> int:
    import torch

    args = bench.args
    # 1. Yardsticks: FLOPs per image (meta device), the bf16 matrix rate, attention kernels.
    tok = za.build_tokenizer()
    cap = za.caption_tokens(tok, za.prompt(0))
    report.data["flops"] = za.count_flops(bench.arch, args.size, args.size, args.steps, cap)
    if args.reduced:  # the full-size count too, so CI exercises the code that runs on a GPU
        report.data["flops"]["full_size_1024"] = za.count_flops(za.FULL, 1024, 1024, 8, cap)
    report.stage("flops", per_image_tflop=round(report.data["flops"]["per_image"] / 1e12, 2))
    report.data["matmul"] = za.matmul_rate(bench.device)
    report.stage("matmul", tflops=round(report.data["matmul"]["flops_per_s"] / 1e12, 1))
    t = bench.arch.transformer
    seq = (args.size // 16) ** 2 + 32
    report.data["attention_bench"] = za.attention_bench(
        bench.device, seq, t["n_heads"], t["dim"] // t["n_heads"])
    report.stage("attention bench")

    # 2. The weights, and optionally the fp32 yardstick for correctness.
    bench.build()
    report.stage("build", seconds=round(report.data["build"]["seconds"], 1))
    if args.fp32_ref:
        try:
            bench.fp32_reference()
            report.stage("fp32 reference")
        except Exception as exc:
            report.data["fp32_reference"] = {"skipped": report.error("fp32 reference", exc)}

    # 3. Each configuration: apply its options, warm up (compile is paid here), check output.
    names = args.config_names
    runners = {n: Runner(bench, SPECS[n]) for n in PREPARE_ORDER if n in names}
    report.data["configs"] = {n: runners[n].out for n in names}
    for name, runner in runners.items():
        if bench.left() < args.budget_s * 0.25:
            runner.out.update(status="skipped", reason="time budget spent before preparing")
            continue
        try:
            runner.prepare()
            if runner.out["status"] == "ready":
                runner.warm_up()
                check_correctness(bench, runner)
                runner.out["status"] = "ok"
        except Exception as exc:
            runner.out.update(status="failed", reason=report.error(f"prepare {name}", exc))
            if bench.cuda:
                torch.cuda.empty_cache()
        report.stage(f"prepared {name}", status=runner.out["status"],
                     cold_s=round((runner.out.get("cold_start") or {}).get("first_run_s") or 0, 2))

    # 4. Timed runs, interleaved round-robin, rotating the order each round; as many rounds
    # as the time left allows (after the CPU-hog stage's share), up to --runs.
    active = fit_rotation(bench, [r for r in runners.values() if r.out["status"] == "ok"])
    planned = planned_rounds(bench, active)
    report.data["settings"]["rounds_planned"] = planned
    sampler = start_sampler(bench)
    rounds = 0
    while rounds < planned and active:
        if bench.left() < round_seconds(active) + hog_reserve_s(bench, active):
            report.data["timed_stopped"] = (f"time budget: {rounds} of {planned} rounds "
                                            f"(raise --budget-s)")
            break
        k = rounds % len(active)
        for runner in active[k:] + active[:k]:
            try:
                runner.timed(rounds)
            except Exception as exc:
                runner.out.update(status="failed",
                                  reason=report.error(f"timed {runner.spec.name}", exc))
        active = [r for r in active if r.out["status"] == "ok"]
        rounds += 1
        if rounds % 5 == 0 or rounds == planned:
            report.stage("timed", rounds=rounds)
    samples = stop_sampler(sampler)
    summarise(bench, report, runners, samples, rounds)

    # 5. The fastest exact configuration again, with a CPU hog on every core.
    try:
        report.data["cpu_hog"] = cpu_hog(bench, runners, report.data["summary"])
    except Exception as exc:
        report.data["cpu_hog"] = {"skipped": report.error("cpu hog", exc)}
    # 6. The memory modes, last: low stores the shared transformer in float8 in place.
    if args.memory_modes:
        try:
            per_run = max((r.runs_s[-1] for r in runners.values() if r.runs_s), default=5.0)
            report.data["memory_modes"] = memory_modes.run_modes(bench, bench.left(), per_run)
        except Exception as exc:
            report.data["memory_modes"] = {"skipped": report.error("memory modes", exc)}
        report.stage("memory modes")
    report.data["status"] = "complete" if rounds >= args.runs else "partial"
    report.stage("done", rounds=rounds)
    text = br.table(report.data)
    (out_dir / "zimage_full.txt").write_text(text + "\n")
    print(text, flush=True)
    return 0


def summarise(bench: Bench, report: br.Report, runners: dict[str, Runner],
              samples: list[Any], rounds: int) -> None:
    """Statistics, the floor and the best configurations; safe with any config skipped."""
    flops = report.data["flops"]["per_image"]
    rate = report.data["matmul"]["flops_per_s"]
    floor_s = flops / rate if rate else None
    base = runners.get("baseline")
    base_median = br.summarize(base.runs_s).get("median_s") if base else None
    for runner in runners.values():
        summarize_runner(bench, runner, base_median, floor_s, samples)
    summary: dict[str, Any] = {"per_image_tflop": flops / 1e12, "matmul_tflops": rate / 1e12,
                               "floor_s": floor_s, "rounds": rounds}
    summary.update(best_of(runners, "best"))
    summary.update(best_of(runners, "best_bf16", bf16_only=True))
    if "best_bf16_config" in summary:
        summary["targets"] = {
            "bf16_median_at_most_0_75_s": (runners[summary["best_bf16_config"]].out[
                "median_s"] or 1e9) <= 0.75,
            "bf16_cv_at_most_1pct": summary["best_bf16_cv"] <= 0.01,
        }
    report.data["summary"] = summary
    report.stage("summary", best=summary.get("best_config"))


def fit_rotation(bench: Bench, active: list[Runner]) -> list[Runner]:
    """Drop DROP_FIRST configurations from the timed rotation until MIN_ROUNDS rounds fit
    the time left (estimated from each one's fastest warm-up run)."""
    for name in DROP_FIRST:
        need = round_seconds(active) * min(MIN_ROUNDS, bench.args.runs)
        if need + hog_reserve_s(bench, active) + 10 <= bench.left():
            break
        for r in [r for r in active if r.spec.name == name]:
            r.out.update(status="skipped", reason=(
                "left out of the timed rounds to fit the time budget (raise --budget-s); "
                "its warm-up and correctness above still ran"))
            active.remove(r)
    return active


def round_seconds(active: list[Runner]) -> float:
    """One round: each configuration's last run (or fastest warm-up), plus 15 %."""
    return sum(r.runs_s[-1] if r.runs_s else min(r.out["warmup_runs_s"]) for r in active) * 1.15


def hog_reserve_s(bench: Bench, active: list[Runner]) -> float:
    """What the stages after the rounds need: the CPU-hog runs of the slowest candidate and
    the memory modes (when on), plus margin."""
    if not active:
        return 0.0
    slowest = max(min(r.out["warmup_runs_s"]) for r in active)
    hog = bench.args.hog_runs * slowest * 1.5 + 5.0 if bench.args.hog_runs > 0 else 0.0
    modes = (memory_modes.needed_s(slowest) if getattr(bench.args, "memory_modes", False)
             else 0.0)
    return hog + modes


def planned_rounds(bench: Bench, active: list[Runner]) -> int:
    """Rounds sized from the measured per-run time: as many as fit, at most --runs."""
    if not active:
        return 0
    spare = bench.left() - hog_reserve_s(bench, active) - 10.0
    return max(0, min(bench.args.runs, int(spare // round_seconds(active))))


def cpu_hog(bench: Bench, runners: dict[str, Runner], summary: dict[str, Any]) -> dict[str, Any]:
    """The best exact configuration measured again while a busy loop runs on every core."""
    import subprocess

    name = summary.get("best_config") or "baseline"
    runner = runners.get(name)
    if runner is None or not runner.runs_s:
        return {"skipped": f"no measured configuration to repeat ({name})"}
    one = statistics_median(runner.runs_s)
    runs = min(bench.args.hog_runs, int(max(0.0, bench.left() - 5.0) // (one * 1.5 + 1e-9)))
    if runs < 2:
        return {"config": name, "skipped": "time budget spent before the CPU-hog runs"}
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.5)
        times = [runner.generate(za.prompt(200 + i), seed=bench.args.seed + 200 + i)["seconds"]
                 for i in range(runs)]
    finally:
        for proc in hogs:
            proc.kill()
        for proc in hogs:
            proc.wait()
    stats = br.summarize(times)
    return {"config": name, "hog_processes": len(hogs), "runs_s": times,
            "median_s": stats["median_s"], "p99_s": stats["p99_s"],
            "p99_over_p50": stats["p99_s"] / stats["median_s"], "cv": stats["cv"],
            "quiet_median_s": one, "slowdown": stats["median_s"] / one}


def statistics_median(values: list[float]) -> float:
    import statistics

    return statistics.median(values)


def best_of(runners: dict[str, Runner], key: str, bf16_only: bool = False) -> dict[str, Any]:
    """The fastest configuration that ran, passed its correctness check (and is bf16)."""
    ok = {n: r.out for n, r in runners.items()
          if n != "baseline" and r.out.get("stats", {}).get("n")
          and r.out.get("correctness", {}).get("passed", False)
          and (not bf16_only or r.out["correctness"].get("kind") == "bf16")}
    if not ok:
        return {}
    best = min(ok, key=lambda n: ok[n]["stats"]["median_s"])
    return {f"{key}_config": best, f"{key}_speedup": ok[best].get("speedup_vs_baseline"),
            f"{key}_cv": ok[best]["stats"]["cv"],
            f"{key}_floor_ratio": ok[best].get("floor_ratio")}


def start_sampler(bench: Bench) -> Any:
    if not bench.cuda:
        return None
    try:
        from steadygen.telemetry.sampler import Sampler

        sampler = Sampler(interval_s=0.1, process_every_s=5.0)
        sampler.start()
        return sampler
    except Exception as exc:
        bench.report.error("telemetry", exc)
        return None


def stop_sampler(sampler: Any) -> list[Any]:
    if sampler is None:
        return []
    samples = sampler.samples_between(0.0, float("inf"))
    sampler.stop()
    return samples


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "benchmark-out"),
                   help="output folder (default: $OUT or ./benchmark-out)")
    p.add_argument("--reduced", action="store_true",
                   help="toy widths on the CPU (automatic without CUDA)")
    p.add_argument("--configs", default=DEFAULT_CONFIGS,
                   help=f"comma-separated, from {', '.join(SPECS)}")
    p.add_argument("--runs", type=int, help="timed runs per config (30; reduced 3)")
    p.add_argument("--warmup", type=int, help="warm-up runs per config (2; reduced 1)")
    p.add_argument("--size", type=int, help="image side (1024; reduced 128)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--budget-s", type=float, help="stop timed rounds before this (420; 900)")
    p.add_argument("--memory-modes", action=argparse.BooleanOptionalAction, default=True,
                   help="measure the memory modes' peak VRAM and offload seconds, last")
    p.add_argument("--hog-runs", type=int,
                   help="runs of the best config with a CPU hog on every core (30; reduced 3)")
    p.add_argument("--compile-backend", default="inductor",
                   choices=("inductor", "aot_eager", "eager"),
                   help="eager/aot_eager only trace: for CI, not for timings")
    p.add_argument("--fp32-ref", action=argparse.BooleanOptionalAction, default=None,
                   help="also compare with an fp32 copy of the transformer (reduced: on; "
                        "full: off, it costs ~25 GB and ~15 s)")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        p.error(f"unknown config(s) {', '.join(unknown)}; known: {', '.join(SPECS)}")
    args.config_names = names if "baseline" in names else ["baseline", *names]
    import torch

    if not torch.cuda.is_available() and not args.reduced:
        print("no CUDA device: running the reduced configuration on the CPU", flush=True)
        args.reduced = True
    full = not args.reduced
    args.runs = args.runs or (30 if full else 3)
    args.warmup = max(1, args.warmup if args.warmup is not None else (2 if full else 1))
    args.size = args.size or (1024 if full else 128)
    args.budget_s = args.budget_s or (420.0 if full else 900.0)
    args.hog_runs = args.hog_runs if args.hog_runs is not None else (30 if full else 3)
    args.fp32_ref = (not full) if args.fp32_ref is None else args.fp32_ref
    return args


if __name__ == "__main__":
    sys.exit(run(parse_args()))
