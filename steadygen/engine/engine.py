"""The engine: load a Z-Image pipeline once, keep it warm, and generate with every phase timed.

``generate`` reads top to bottom like diffusers' own ``__call__``: 1. encode the prompt,
2. prepare and run the denoising loop (each step timed), 3. decode, 4. save, 5. optional
per-request cache emptying. torch and diffusers are imported here and in the other engine
modules only.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steadygen.engine import graphs, memory, modes, speed
from steadygen.engine.device import (
    configure_allocator,
    cuda_available,
    is_oom,
    memory_stats,
    reset_peak,
)
from steadygen.engine.encode import encode_prompt
from steadygen.engine.models import ModelSpec, default_model_name, require_available, resolve_model
from steadygen.engine.outputs import a1111_parameters, save_png, unique_stem
from steadygen.engine.timings import StepClock, Timings
from steadygen.errors import Cancelled, ConfigError, GenerationError, OutOfMemory
from steadygen.request import GenerationRequest

log = logging.getLogger("steadygen.engine")


@dataclass(frozen=True)
class StepProgress:
    """What the step callback receives after each denoising step."""

    step: int  # steps completed, 1-based
    total: int
    step_s: float  # host-side length of this step
    elapsed_s: float  # since the job entered the engine
    denoise_elapsed_s: float  # since the first step started (callbacks included)
    # the latents after this step (a reference, not a copy), for live previews
    latents: Any = field(default=None, repr=False, compare=False)

    def remaining_s(self, tail_s: float | None = None) -> float:
        """Seconds until the job ends: this job's own mean step (as the wall clock saw it)
        for each step left, plus ``tail_s`` for decode and save (half a step when unknown).
        The one in-run ETA formula; the queue adds the wait ahead of a job."""
        mean_step_s = self.denoise_elapsed_s / self.step if self.step else self.step_s
        tail = tail_s if tail_s is not None else 0.5 * mean_step_s
        return max(0.0, (self.total - self.step) * mean_step_s + tail)


@dataclass
class GenerationResult:
    request: GenerationRequest
    images: list[Any]  # PIL images
    paths: list[Path]
    timings: Timings
    model: str
    device: str
    notes: list[str] = field(default_factory=list)
    memory: dict[str, float] = field(default_factory=dict)  # allocator stats, bytes
    metadata: dict[str, Any] = field(default_factory=dict)


class Engine:
    """One pipeline on one device. ``generate`` is serialised: a pipeline is not thread-safe."""

    def __init__(
        self,
        spec: ModelSpec,
        device: str,
        cache_dir: Path,
        options: speed.EngineOptions | None = None,
    ):
        self.spec = spec
        self.device = device
        self.cache_dir = Path(cache_dir)
        self.options = options or speed.EngineOptions()
        self.pipe: Any = None
        self.load_s: float | None = None
        self.warmup_s: float = 0.0
        self.applied: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._warm_shapes: set[tuple[int, int, bool, int, str, bool]] = set()
        self._prompt_cache = speed.PromptCache(self.options.prompt_cache_size)
        self._warm_keys: set[tuple[Any, ...]] = set()  # shape + caption buckets
        self._memory: memory.Offloader | None = None
        self._graphs: graphs.GraphRunner | None = None
        self.fault_hook: Callable[[str], None] | None = None  # tests inject faults here
        self._previewer: Any = None  # built on the first preview (engine/preview.py)
        self.edits = modes.EditState(modes.EditConfig())

    def configure_edits(self, config: modes.EditConfig) -> None:
        """Where input images are read from, the LoRA folder and the ControlNet (editing)."""
        self.edits = modes.EditState(config)

    # -- lifecycle ---------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        model: str | None = None,
        device: str | None = None,
        cache_dir: Path | str | None = None,
        options: speed.EngineOptions | None = None,
        turbo_source: str | None = None,
        concurrency: int = 1,
    ) -> Engine:
        """Pick the model and device (CUDA when present) and check the model can run here."""
        if cache_dir is None:
            from steadygen.config import Settings

            cache_dir = Settings().cache_dir
        opts = options or speed.EngineOptions()
        set_by_us = configure_allocator()
        has_cuda = cuda_available()
        name = model or default_model_name(has_cuda)
        spec = resolve_model(name, **({"turbo_source": turbo_source} if turbo_source else {}))
        dev = device or ("cuda:0" if has_cuda else "cpu")
        if dev.startswith("cuda") and not has_cuda:
            raise GenerationError(f"device {dev} was asked for but CUDA is not available here")
        require_available(spec, dev.startswith("cuda"))
        plan = memory.plan(opts.memory, memory.device_total_bytes(dev))
        refusal = concurrency_refusal(dev, concurrency) or memory.check_combination(plan, opts.fp8)
        if refusal is not None:
            raise ConfigError(refusal)
        if opts.fp8:  # refuse before loading 20 GB, not after
            refusal = speed.fp8_refusal(dev)
            if refusal is not None:
                raise ConfigError(refusal)
        engine = cls(spec, dev, Path(cache_dir), options)
        engine.applied["alloc_conf_set_by_steadygen"] = set_by_us
        return engine

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def loaded(self) -> bool:
        return self.pipe is not None

    @property
    def model_name(self) -> str:
        return self.spec.name

    def load(self) -> float:
        """Load the pipeline onto the device; returns the seconds it took (0 if loaded)."""
        with self._lock:
            return self._load_locked()

    def _load_locked(self) -> float:
        if self.pipe is not None:
            return 0.0
        import torch
        from diffusers import ZImagePipeline
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
        t0 = time.monotonic()
        source, local_only = self._source()
        dtype = torch.bfloat16 if self.is_cuda else torch.float32
        pipe = ZImagePipeline.from_pretrained(
            source, dtype=dtype, local_files_only=local_only
        )
        pipe.set_progress_bar_config(disable=True)
        plan = memory.plan(self.options.memory, memory.device_total_bytes(self.device))
        self._memory = memory.Offloader(plan, self.device, self._sync)
        self.applied.update(self._memory.place(pipe, fp8_compute=self.options.fp8))
        self.applied.update(speed.apply_options(pipe, self.options, self.device))
        self._graphs, self.applied["cuda_graphs"] = graphs.install(
            pipe.transformer, self.options.cuda_graphs, self.device, plan.offload_models)
        self.pipe = pipe
        self.load_s = time.monotonic() - t0
        log.info("loaded %s on %s in %.2f s", self.spec.name, self.device, self.load_s)
        return self.load_s

    def _source(self) -> tuple[str, bool]:
        if self.spec.kind == "tiny":
            from steadygen.engine.tiny import ensure_tiny_checkpoint

            return str(ensure_tiny_checkpoint(self.cache_dir)), True
        if self.spec.kind == "local" or Path(self.spec.source).expanduser().is_dir():
            return str(Path(self.spec.source).expanduser()), True
        return self.spec.source, os.environ.get("HF_HUB_OFFLINE") == "1"

    def fork(self) -> Engine:
        """A second runner on the same weights with its own scheduler, for running more
        than one generation at once (the scheduler holds the step index)."""
        import copy

        from diffusers import ZImagePipeline

        with self._lock:
            self._load_locked()
            twin = Engine(self.spec, self.device, self.cache_dir, self.options)
            components = dict(self.pipe.components)
            components["scheduler"] = copy.deepcopy(self.pipe.scheduler)
            twin.pipe = ZImagePipeline(**components)
            twin.pipe.set_progress_bar_config(disable=True)
            twin.applied = dict(self.applied)
            twin.load_s = 0.0
            twin._warm_shapes = self._warm_shapes
            twin._warm_keys = self._warm_keys
            twin._memory = self._memory
            twin.edits = self.edits.fork()
            return twin

    def warmup(self, sizes: list[tuple[int, int]], steps: int = 2) -> float:
        """Run each shape once so no request pays first-run costs (cuDNN, compile)."""
        t0 = time.monotonic()
        for width, height in sizes:
            req = GenerationRequest(
                prompt="warm-up", width=width, height=height, steps=steps, guidance=0.0,
                seed=0, n=1, model=self.spec.name,
            )
            self.generate(req, save_dir=None)
        if self.options.compile and sizes:  # the compiled variants a later request could meet
            width, height = min(sizes, key=lambda s: s[0] * s[1])
            for extra in speed.COMPILE_WARMUP_VARIANTS:
                fields = {"prompt": "warm-up", "guidance": 0.0, "n": 1, **extra}
                self.generate(GenerationRequest(
                    width=width, height=height, steps=steps, seed=0, model=self.spec.name,
                    **fields,
                ), save_dir=None)
        if self.edits.config.warmup and sizes:
            with modes.warmup_dir() as tmp:
                for req in modes.warmup_requests(self.spec.name, sizes, steps,
                                                 self.edits.has_controlnet, Path(tmp)):
                    self.generate(req, save_dir=None, inputs_dir=Path(tmp))
        self.warmup_s = time.monotonic() - t0
        return self.warmup_s

    def is_warm(self, width: int, height: int, cfg: bool = False, n: int = 1,
                mode: str = "txt2img", control: bool = False) -> bool:
        return (width, height, cfg, n, mode, control) in self._warm_shapes

    @property
    def warm(self) -> bool:
        return bool(self._warm_shapes)

    def preview(self, latents: Any) -> bytes:
        """A small JPEG of the first image's latents mid-denoising (``StepProgress.latents``),
        by the VAE's fitted latent->RGB map; the map is loaded or fitted on the first call."""
        if self._previewer is None:
            from steadygen.engine.preview import Previewer, load_or_fit

            self._previewer = Previewer(load_or_fit(self.pipe.vae, self.cache_dir))
        return bytes(self._previewer.jpeg(latents))

    def versions(self) -> dict[str, str]:
        import diffusers
        import torch
        import transformers

        from steadygen import __version__

        out = {
            "steadygen": __version__,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        }
        if self.is_cuda:
            out["cuda"] = str(torch.version.cuda)
            out["gpu"] = torch.cuda.get_device_name(torch.device(self.device))
        return out

    # -- generation --------------------------------------------------------------------

    def generate(
        self,
        req: GenerationRequest,
        on_step: Callable[[StepProgress], None] | None = None,
        cancel: threading.Event | None = None,
        save_dir: Path | None = None,
        file_prefix: str = "",
        inputs_dir: Path | None = None,
    ) -> GenerationResult:
        """Generate ``req.n`` images. Raises Cancelled, OutOfMemory or GenerationError.
        ``inputs_dir`` holds the request's input images (default: the configured one)."""
        with self._lock, self.edits.exclusive():  # LoRAs on shared weights: one job at once
            t_start = time.monotonic()
            timings = Timings(marks={"start": t_start})
            timings.load_s = self._load_locked()
            inputs = inputs_dir or self.edits.config.inputs_dir
            try:
                return self._generate_locked(req, on_step, cancel, save_dir, file_prefix, timings,
                                             inputs)
            except Cancelled:
                raise
            except Exception as exc:
                typed = self._typed_failure(exc, req)
                failure = exc
            # Outside the except block, and with the traceback's frames dropped, the failed
            # job's tensors are unreachable: emptying the cache now returns them to the device.
            log.debug("generation failed", exc_info=failure)
            failure.__traceback__ = None
            self._recover_memory()
            if typed is failure:
                raise typed
            raise typed from failure

    def _typed_failure(self, exc: Exception, req: GenerationRequest) -> Exception:
        if is_oom(exc):
            return OutOfMemory(
                f"out of memory on {self.device} at {req.size}, n={req.n}: try a smaller size "
                "or fewer images; memory was returned and the next job can run"
            )
        if isinstance(exc, GenerationError):
            return exc
        return GenerationError(f"generation failed: {type(exc).__name__}: {exc}")

    def _generate_locked(
        self,
        req: GenerationRequest,
        on_step: Callable[[StepProgress], None] | None,
        cancel: threading.Event | None,
        save_dir: Path | None,
        file_prefix: str,
        timings: Timings,
        inputs_dir: Path | None = None,
    ) -> GenerationResult:
        """The stages in order, each timed at its edges (``timings.marks``)."""
        shape = _shape(req)
        if self.is_cuda:
            reset_peak(self.device)  # result.memory's peak is this job's
        self._fault("start")
        embeds = self._encode(req, timings)  # 1
        key = (*shape, speed.caption_buckets(_caption_lengths(req, embeds)))
        timings.first_of_shape = key not in self._warm_keys  # a new size or caption bucket
        prepared = self._prepare_edit(req, inputs_dir, timings)  # 1b (editing only)
        latents, run = self._denoise(req, embeds, on_step, cancel, timings, prepared)  # 2
        images = self._decode_stage(req, latents, timings, prepared)  # 3
        paths = self._save(req, images, save_dir, file_prefix, timings)  # 4
        self._release(timings)  # 5
        self._finish_timings(timings, timings.marks)
        memory = memory_stats(self.device) if self.is_cuda else {}
        self._warm_shapes.add(shape)
        self._warm_keys.add(key)
        return GenerationResult(
            request=req,
            images=images,
            paths=paths,
            timings=timings,
            model=self.spec.name,
            device=self.device,
            notes=self._notes(req),
            memory=memory,
            metadata={
                "versions": self.versions(),
                "options": self.options_summary(),
                "shape_key": {"width": key[0], "height": key[1], "cfg": key[2], "n": key[3],
                              "caption_buckets": list(key[-1])},
                "first_run_of_shape": timings.first_of_shape,
                **run,
                "edit": vars(modes.EditFacts.of(req, self.edits.adapters)),
            },
        )

    def _encode(self, req: GenerationRequest, timings: Timings) -> tuple[Any, Any]:
        """1. Encode the prompt (and the negative prompt when CFG is on); cached by text."""
        import torch

        self._fault("encode")
        pipe = self.pipe
        key = (req.prompt, req.negative_prompt if req.uses_cfg else None)
        cached = self._prompt_cache.get(key)
        timings.prompt_cache_hit = cached is not None
        if cached is None:
            with torch.inference_mode(), self._offload("text_encoder", timings, "encode"):
                cached = encode_prompt(pipe, req.prompt, req.negative_prompt, req.uses_cfg,
                                       self.options.exact_length_prompts)
            self._prompt_cache.put(key, cached)
        timings.marks["encode_end"] = self._sync()
        return cached

    def _prepare_edit(
        self, req: GenerationRequest, inputs_dir: Path | None, timings: Timings
    ) -> modes.PreparedInputs:
        """1b. Switch LoRA adapters and load the ControlNet once (``adapter_s``); read,
        resize and mask the input images (``image_prep_s``). Nothing for plain txt2img."""
        timings.adapter_s = self.edits.adapters.apply(self.pipe, req.loras)
        if req.control_image is not None:  # the ControlNet's first load counts as a switch
            timings.adapter_s += self.edits.controlnet(self.pipe)[1]
        t0 = time.monotonic()
        prepared = modes.prepare_inputs(req, inputs_dir)
        timings.image_prep_s = time.monotonic() - t0
        return prepared

    def _denoise(
        self,
        req: GenerationRequest,
        embeds: tuple[Any, Any],
        on_step: Callable[[StepProgress], None] | None,
        cancel: threading.Event | None,
        timings: Timings,
        prepared: modes.PreparedInputs | None = None,
    ) -> tuple[Any, dict[str, Any]]:
        """2. Prepare and run the pipeline's own denoising loop, each step timed between the
        transformer's first entry and the step-end callback. Returns the latents and facts
        about the run (compilations paid, whether an attention mask was needed)."""
        import torch

        pipe = self.pipe
        marks = timings.marks
        t_start = marks["start"]
        prompt_embeds, negative_embeds = embeds
        clock = StepClock(self.is_cuda)
        generators = [torch.Generator(device="cpu").manual_seed(s) for s in req.image_seeds]
        total = req.steps_run  # fewer than req.steps for an edit at strength < 1
        controlnet = self.edits.controlnet(pipe)[0] if req.control_image is not None else None
        mode_pipe = self.edits.pipeline(pipe, req, controlnet)
        mode_kwargs = modes.call_kwargs(req, prepared or modes.PreparedInputs())

        def on_step_end(_pipe: Any, i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            clock.end()
            self._fault(f"step:{i + 1}")
            if on_step is not None:
                now = time.monotonic()
                on_step(StepProgress(i + 1, total, clock.host_step_s(), now - t_start,
                                     now - (clock.first_start or t_start),
                                     latents=kwargs.get("latents")))
            if cancel is not None and cancel.is_set() and i + 1 < total:
                raise Cancelled(at_step=i + 1)
            clock.resume()
            return kwargs

        hook = pipe.transformer.register_forward_pre_hook(lambda *_: clock.start())
        backend = self.applied.get("attention_backend", "native")
        captions = list(prompt_embeds) + (list(negative_embeds) if req.uses_cfg else [])
        needs_mask = speed.needs_attention_mask([len(c) for c in captions])
        compiles = speed.CompileWatch()
        vae_clock = modes.VaeEncodeClock(pipe.vae, self._sync)
        try:
            with torch.inference_mode(), compiles, vae_clock, speed.mask_safe_attention(
                pipe.transformer, backend, needs_mask=needs_mask
            ), self._offload("transformer", timings, "prepare", None):
                latents = mode_pipe(
                    prompt_embeds=list(prompt_embeds),
                    negative_prompt_embeds=list(negative_embeds) if req.uses_cfg else None,
                    height=req.height,
                    width=req.width,
                    num_inference_steps=req.steps,
                    guidance_scale=req.guidance,
                    num_images_per_prompt=req.n,
                    generator=generators,
                    output_type="latent",
                    callback_on_step_end=on_step_end,
                    **mode_kwargs,
                ).images
        finally:
            hook.remove()
        timings.vae_encode_s = vae_clock.seconds
        marks["denoise_end"] = self._sync()
        marks["prepare_end"] = clock.first_start or marks["denoise_end"]
        timings.steps_s, timings.step_ends, timings.callbacks_s = clock.resolve(
            marks["denoise_end"]
        )
        captures = self._graphs.drain_events() if self._graphs is not None else []
        # compiles and graph captures are cold start, not slow steps
        speed.move_compile_into_warmup(timings, compiles.events + captures)
        return latents, {
            "recompiles": compiles.count,  # compilations this job paid (0 when warm)
            "compile_s": compiles.seconds,
            "graph_breaks": compiles.graph_breaks,
            "graph_captures": len(captures),
            "graph_capture_s": sum(e.seconds for e in captures),
            "attention_mask": needs_mask,
        }

    def _decode_stage(
        self, req: GenerationRequest, latents: Any, timings: Timings,
        prepared: modes.PreparedInputs | None = None,
    ) -> list[Any]:
        """3. Decode the latents into images (an inpaint's kept pixels put back)."""
        import torch

        self._fault("decode")
        vae = self.pipe.vae
        tiling = self._memory.vae_tiling(self.options.vae_tiling) if self._memory else "auto"
        speed.vae_tiling_for(vae, tiling, req.width, req.height)
        with torch.inference_mode(), self._offload("vae", timings, "decode"), \
                speed.vae_decode_mode(vae, self.options.vae_decode, self.is_cuda):
            images = self._decode(latents)
        if prepared is not None:
            images = modes.finish_images(prepared, images)
        timings.marks["decode_end"] = self._sync()
        self._finish_timings(timings, timings.marks)  # provisional, for the PNG metadata
        return images

    def _save(
        self,
        req: GenerationRequest,
        images: list[Any],
        save_dir: Path | None,
        file_prefix: str,
        timings: Timings,
    ) -> list[Path]:
        """4. Save PNGs with their parameters inside."""
        self._fault("save")
        paths: list[Path] = []
        if save_dir is not None:
            stem = unique_stem(file_prefix)
            for k, (image, seed_k) in enumerate(zip(images, req.image_seeds, strict=True)):
                meta = self._metadata(req, seed_k, k, timings)
                path = Path(save_dir) / f"{stem}-{k}.png"
                params = a1111_parameters(req, self.spec.name, seed_k)
                paths.append(save_png(image, path, parameters=params, metadata=meta))
        timings.marks["save_end"] = time.monotonic()
        return paths

    def _release(self, timings: Timings) -> None:
        """5. The known-bad case, on purpose only: give cached memory back after every job."""
        if self.options.empty_cache_per_request:
            import torch

            gc.collect()
            if self.is_cuda:
                torch.cuda.empty_cache()
        timings.marks["end"] = self._sync()

    def _decode(self, latents: Any) -> list[Any]:
        pipe = self.pipe
        vae = pipe.vae
        latents = latents.to(vae.dtype)
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        decoded = vae.decode(latents, return_dict=False)[0]
        return list(pipe.image_processor.postprocess(decoded, output_type="pil"))

    @staticmethod
    def _finish_timings(t: Timings, m: dict[str, float]) -> None:
        off = t.offload_phases  # weights moved inside a phase are offload, not that phase
        edit_s = t.adapter_s + t.image_prep_s + t.vae_encode_s  # inside the same interval
        t.encode_s = m["encode_end"] - m["start"] - t.load_s - off.get("encode", 0.0)
        t.prepare_s = max(0.0, m["prepare_end"] - m["encode_end"] - off.get("prepare", 0.0)
                          - edit_s)
        t.decode_s = m["decode_end"] - m["denoise_end"] - off.get("decode", 0.0)
        last = m.get("end", m["decode_end"])
        t.save_s = m.get("save_end", m["decode_end"]) - m["decode_end"]
        t.memory_s = last - m.get("save_end", last)
        t.total_s = last - m["start"]
        # On CUDA the event-timed steps can differ slightly from the host interval; whatever
        # the host saw between the first step and the end of denoising that the steps do not
        # cover stays in other_s rather than being forced into a phase.

    def _offload(self, name: str, timings: Timings, phase_in: str | None,
                 phase_out: str | None = "") -> Any:
        """The memory mode's timed moves around one model's stage (a no-op in high)."""
        if self._memory is None:
            return contextlib.nullcontext()
        out = phase_in if phase_out == "" else phase_out
        return self._memory.stage(self.pipe, name, timings, phase_in, out)

    def _sync(self) -> float:
        if self.is_cuda:
            import torch

            torch.cuda.synchronize(torch.device(self.device))
        return time.monotonic()

    def _fault(self, where: str) -> None:
        if self.fault_hook is not None:
            self.fault_hook(where)

    def _recover_memory(self) -> None:
        gc.collect()
        if self.is_cuda:
            import torch

            torch.cuda.empty_cache()

    def _notes(self, req: GenerationRequest) -> list[str]:
        notes = []
        if req.uses_cfg:
            notes.append(
                f"guidance {req.guidance:g} > 0 turns on classifier-free guidance: two "
                "transformer passes per step, about twice the compute (Turbo uses 0)"
            )
        if self.spec.noise_only:
            notes.append(f"{self.spec.name} has random weights: its images are noise")
        return notes

    def _metadata(
        self, req: GenerationRequest, seed: int, index: int, timings: Timings
    ) -> dict[str, Any]:
        params = req.to_dict()
        params["seed"] = seed
        return {
            "parameters": params,
            "index": index,
            "model": self.spec.name,
            "device": self.device,
            "timings": timings.public(),
            "versions": self.versions(),
            "options": self.options_summary(),
        }

    def options_summary(self) -> dict[str, Any]:
        return {**self.options.to_dict(), "applied": dict(self.applied)}


def _shape(req: GenerationRequest) -> tuple[int, int, bool, int, str, bool]:
    return (req.width, req.height, req.uses_cfg, req.n, req.mode, req.control_image is not None)


def _caption_lengths(req: GenerationRequest, embeds: tuple[Any, Any]) -> list[int]:
    positive, negative = embeds
    return [len(c) for c in positive] + ([len(c) for c in negative] if req.uses_cfg else [])


def concurrency_refusal(device: str, concurrency: int) -> str | None:
    """Running several jobs at once on one CUDA pipeline is refused: the engines would share
    the transformer's step hooks, its attention processors (switched for masked calls) and
    the VAE's tiling switch, so one job could change another's kernels mid-step."""
    if concurrency > 1 and device.startswith("cuda"):
        return (
            f"concurrency {concurrency} on {device} is not supported: jobs on one GPU would "
            "share the transformer's attention and VAE settings mid-run, and one GPU runs "
            "them no faster than one at a time. Use concurrency 1 (the default), or one "
            "worker per GPU (steadygen worker --device cuda:N)."
        )
    return None
