"""Speed options for the engine: attention backend, regional compile, FP8, VAE tiling and
the text-encoder output cache. Each option degrades with one clear notice where the machine
cannot do it, except FP8, which is refused: silently running in bf16 would mislead.

Compile is watched, not just switched on: ``CompileWatch`` counts the Dynamo compilations a
generation paid and how long they stalled it, and ``move_compile_into_warmup`` books that
time as warm-up instead of as slow steps, so attribution can call it cold start.

CUDA graphs are deliberately not offered. The compiled blocks run with dynamic shapes (a
new resolution or prompt length must not recompile), and ``mode="reduce-overhead"`` records
one graph per concrete shape per block variant, re-recording on every new shape; at 1024x1024
a step is ~55 TFLOP of large GEMMs, so the GPU is never waiting on kernel launches and
there is nothing for a graph to win back. The benchmark reports per-step times so that a
launch-bound configuration would show.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from typing import Any

from steadygen.errors import ConfigError

log = logging.getLogger("steadygen.engine")

# steadygen's names -> diffusers' attention backend names
BACKENDS = {
    "sdpa": "native",
    "flash": "_native_flash",  # PyTorch's own flash SDPA kernel: no extra package
    "cudnn": "_native_cudnn",
    "flash3": "_flash_3",  # FlashAttention-3 (Hopper), needs the flash_attn_interface package
}
# These raise "attn_mask is not supported"; cuDNN through SDPA converts and takes a mask.
MASK_FREE_ONLY = {"_native_flash", "_flash_3", "flash", "_flash_3_hub", "flash_hub"}
TILING_AUTO_PIXELS = 1536 * 1536
SEQ_MULTI_OF = 32  # Z-Image pads captions and images to this; checked against diffusers below
# The compiled block has a handful of variants (modulated or not, batch 1 or more, with or
# without a mask, per attention backend, bf16 or FP8). Dynamo's default of 8 per code object
# is shared by all 34 blocks; past it Dynamo silently runs eager.
RECOMPILE_LIMIT = 64
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")
FP8_MIN_CAPABILITY = (8, 9)


@dataclass(frozen=True)
class EngineOptions:
    attention: str = "auto"  # auto | sdpa | flash | flash3 | cudnn
    compile: bool = False  # torch.compile of the transformer's repeated blocks
    fp8: bool = False  # torchao float8 dynamic activation + weight, CUDA sm89+ only
    vae_tiling: str = "auto"  # auto (large sizes only) | on | off
    prompt_cache_size: int = 32  # text-encoder outputs kept per prompt text; 0 is off
    empty_cache_per_request: bool = False  # the known-bad case, for benchmarks
    # inductor makes kernels; eager and aot_eager only trace (for studying recompiles)
    compile_backend: str = "inductor"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PromptCache:
    """A small LRU of text-encoder outputs keyed by (prompt, negative prompt)."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Any) -> Any:
        if self.size <= 0 or key not in self._items:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: Any, value: Any) -> None:
        if self.size <= 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


# -- attention ------------------------------------------------------------------------------


def _capability(device: str) -> tuple[int, int] | None:
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability(torch.device(device)))  # type: ignore[return-value]


def fa3_usable() -> bool:
    """FlashAttention-3 importable *and* accepted by diffusers (it checks the version)."""
    if importlib.util.find_spec("flash_attn_interface") is None:
        return False
    try:
        from diffusers.models.attention_dispatch import (
            AttentionBackendName,
            _check_attention_backend_requirements,
        )

        _check_attention_backend_requirements(AttentionBackendName._FLASH_3)
    except (ImportError, RuntimeError, OSError):
        return False
    return True


def choose_backend(requested: str, device: str) -> tuple[str, str]:
    """(diffusers backend name, a sentence on why), never raising: unavailable means SDPA.

    ``auto`` prefers FlashAttention-3 on Hopper, then cuDNN attention, then PyTorch's flash
    kernel (sm80+); ``mask_safe_attention`` covers the calls where a mask is needed.
    """
    cap = _capability(device)
    if requested == "sdpa":
        return "native", "SDPA as asked"
    if cap is None:
        if requested != "auto":
            log.warning("attention %s needs a CUDA GPU; using SDPA", requested)
            return "native", f"{requested} needs a CUDA GPU; using SDPA"
        return "native", "SDPA (CPU)"
    if requested in ("auto", "flash3"):
        if cap[0] == 9 and fa3_usable():
            return "_flash_3", "FlashAttention-3 on Hopper"
        if requested == "flash3":
            log.warning("FlashAttention-3 needs a Hopper GPU and flash_attn_interface; using SDPA")
            return "native", "FlashAttention-3 unavailable here; using SDPA"
    if requested in ("auto", "cudnn") and cap >= (8, 0):
        note = " (FlashAttention-3 not usable here)" if requested == "auto" and cap[0] == 9 else ""
        return "_native_cudnn", "cuDNN attention through SDPA" + note
    if requested in ("auto", "flash") and cap >= (8, 0):
        return "_native_flash", "PyTorch flash SDPA"
    log.warning("attention %s is not available on sm%d%d; using SDPA", requested, *cap)
    return "native", f"{requested} unavailable on sm{cap[0]}{cap[1]}; using SDPA"


def set_backend(transformer: Any, backend: str) -> None:
    """Point every attention processor at ``backend`` (a cheap loop; no re-dispatch)."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    name = AttentionBackendName(backend)
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_attention_backend"):
            processor._attention_backend = name


def needs_attention_mask(caption_lengths: Sequence[int]) -> bool:
    """Whether Z-Image's transformer will build an attention mask for this batch.

    diffusers (``_prepare_sequence`` and ``_build_unified_sequence`` in
    transformer_z_image.py) pads every caption and image to a multiple of 32 tokens and
    builds a mask only when the padded lengths in the batch differ. Images in one call share
    a size, so only captions decide: CFG with a negative prompt in another 32-token bucket,
    or a batch of prompts of different buckets. ``caption_lengths`` are the unpadded token
    counts of every caption the transformer sees in one forward (positive and negative).
    """
    padded = {-(-int(n) // SEQ_MULTI_OF) * SEQ_MULTI_OF for n in caption_lengths}
    return len(padded) > 1


def check_seq_multiple() -> None:
    """Fail loudly if diffusers changes the padding rule ``needs_attention_mask`` mirrors."""
    from diffusers.models.transformers import transformer_z_image

    found = getattr(transformer_z_image, "SEQ_MULTI_OF", None)
    if found != SEQ_MULTI_OF:
        raise RuntimeError(
            f"diffusers pads Z-Image sequences to {found}, steadygen assumes {SEQ_MULTI_OF}: "
            "update steadygen.engine.speed.SEQ_MULTI_OF"
        )


@contextmanager
def mask_safe_attention(transformer: Any, backend: str, needs_mask: bool):
    """Fall back to SDPA for one call when a mask-refusing backend would get a mask."""
    if not needs_mask or backend not in MASK_FREE_ONLY:
        yield
        return
    set_backend(transformer, "native")
    try:
        yield
    finally:
        set_backend(transformer, backend)


# -- compile ----------------------------------------------------------------------------------


def enable_compile(transformer: Any, backend: str = "inductor") -> str:
    """torch.compile each repeated block (ZImageTransformerBlock) with dynamic shapes.

    Regional, not whole-model: the 34 blocks share a few compiled variants, so the first
    call compiles in seconds-to-a-minute and a new resolution or prompt length does not
    recompile (whole-model compile recompiles on both). A first batch of 2 (n=2 or CFG) and
    a first mask do compile new variants once; ``COMPILE_WARMUP_VARIANTS`` pays for them.
    """
    import torch._dynamo

    if backend not in COMPILE_BACKENDS:
        raise ConfigError(
            f"compile backend must be one of {', '.join(COMPILE_BACKENDS)} (got {backend!r})"
        )
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # renamed in torch 2.7
        if hasattr(config, name) and getattr(config, name) < RECOMPILE_LIMIT:
            setattr(config, name, RECOMPILE_LIMIT)
    transformer.compile_repeated_blocks(fullgraph=False, dynamic=True, backend=backend)
    return f"repeated blocks (ZImageTransformerBlock), dynamic shapes, {backend}"


# Extra warm-up requests when compile is on (on top of each configured size at n=1, no CFG):
# a batch of two makes the batch dimension dynamic (Dynamo specialises size 1), and CFG with
# a negative prompt in another 32-token bucket compiles the masked variant (and, for a
# mask-refusing backend, the SDPA fallback).
COMPILE_WARMUP_VARIANTS: tuple[dict[str, Any], ...] = (
    {"n": 2},
    {"guidance": 2.0, "negative_prompt": " ".join(["a longer negative prompt"] * 12)},
)


@dataclass
class CompileEvent:
    start_s: float  # time.monotonic()
    end_s: float
    trigger: str  # DYNAMO (a frame traced and compiled), CUDAGRAPH_RECORDING, ...

    @property
    def seconds(self) -> float:
        return self.end_s - self.start_s


@dataclass
class CompileWatch:
    """Compilations that ran on this thread while the watch was open.

    Uses Dynamo's compile start/end callbacks (``torch._dynamo.callback_handler``; nested
    compilations fold into their outermost one, cache hits fire nothing). Where that API is
    missing it falls back to the ``unique_graphs`` counter: a count without seconds.
    """

    events: list[CompileEvent] = field(default_factory=list)
    fallback_count: int = 0
    _thread: int = 0
    _open: dict[str, tuple[float, str]] = field(default_factory=dict)
    _handler: Any = None
    _graphs_before: int = 0

    @property
    def count(self) -> int:
        return len(self.events) + self.fallback_count

    @property
    def seconds(self) -> float:
        return sum(e.seconds for e in self.events)

    def _on_start(self, args: Any) -> None:
        if threading.get_ident() == self._thread:
            self._open[str(args.compile_id)] = (time.monotonic(), args.callback_trigger.name)

    def _on_end(self, args: Any) -> None:
        opened = self._open.pop(str(args.compile_id), None)
        if opened is not None and threading.get_ident() == self._thread:
            self.events.append(CompileEvent(opened[0], time.monotonic(), opened[1]))

    def __enter__(self) -> CompileWatch:
        import torch._dynamo
        from torch._dynamo.utils import counters

        self._thread = threading.get_ident()
        self._handler = getattr(torch._dynamo, "callback_handler", None)
        if self._handler is not None:
            self._handler.register_start_callback(self._on_start)
            self._handler.register_end_callback(self._on_end)
        else:
            self._graphs_before = counters["stats"]["unique_graphs"]
        return self

    def __exit__(self, *exc: object) -> None:
        from torch._dynamo.utils import counters

        if self._handler is None:
            self.fallback_count = counters["stats"]["unique_graphs"] - self._graphs_before
            return
        for remove, cb in (
            (self._handler.remove_start_callback, self._on_start),
            (self._handler.remove_end_callback, self._on_end),
        ):
            with suppress(ValueError):  # torch._dynamo.reset() cleared them meanwhile
                remove(cb)


def move_compile_into_warmup(timings: Any, events: Sequence[CompileEvent]) -> float:
    """Move the seconds that compilations stalled the denoising steps into ``warmup_s``.

    A compile runs on the host inside the step that first meets a new shape, so that step
    looks slow; booked as warm-up, attribution reports it as cold start and the per-step
    baseline stays clean. Each event goes to the step whose interval holds its midpoint
    (host edges on CPU; on CUDA the event-timed steps laid back from the end of denoising,
    close enough to find the step). Returns the seconds moved; the phase identity holds.
    """
    steps = timings.steps_s
    ends = timings.step_ends
    first = timings.marks.get("prepare_end")
    if not steps or first is None or len(ends) != len(steps):
        return 0.0
    edges = [first, *ends]
    moved = 0.0
    for ev in events:
        mid = (ev.start_s + ev.end_s) / 2
        if not edges[0] <= mid <= timings.marks.get("denoise_end", edges[-1]):
            continue
        index = next(
            (i for i in range(len(steps)) if edges[i] <= mid <= edges[i + 1]),
            max(range(len(steps)), key=lambda i: steps[i]),
        )
        take = min(ev.seconds, steps[index])
        steps[index] -= take
        moved += take
    timings.warmup_s += moved
    return moved


# -- FP8 and the rest ------------------------------------------------------------------------


def fp8_linear_filter(module: Any, fqn: str) -> bool:
    """Quantize the attention and feed-forward projections of the transformer blocks only.

    Embedders, the adaLN modulation (one row per image: nothing for FP8 to win) and the
    final layer stay in bf16, as FP8 serving recipes for DiTs do; _scaled_mm needs both
    dimensions divisible by 16.
    """
    import torch

    if not isinstance(module, torch.nn.Linear):
        return False
    if not fqn.startswith(("layers.", "noise_refiner.", "context_refiner.")) or "adaLN" in fqn:
        return False
    return module.in_features % 16 == 0 and module.out_features % 16 == 0


def fp8_refusal(device: str) -> str | None:
    """Why FP8 cannot run on ``device`` (None when it can)."""
    cap = _capability(device)
    if cap is None or cap < FP8_MIN_CAPABILITY:
        where = "this CPU" if cap is None else f"sm{cap[0]}{cap[1]}"
        return (
            f"FP8 needs an NVIDIA GPU with compute capability 8.9 or newer (Ada, Hopper, "
            f"Blackwell); {where} has none. Run without --fp8."
        )
    if importlib.util.find_spec("torchao") is None:
        return "FP8 needs the torchao package (pip install 'torchao>=0.18'). Run without --fp8."
    return None


def enable_fp8(pipe: Any, device: str) -> str:
    refusal = fp8_refusal(device)
    if refusal is not None:
        raise ConfigError(refusal)
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        PerRow,
        quantize_,
    )

    # set_inductor_config=False: torchao would otherwise switch on coordinate-descent
    # autotuning for the whole process, which multiplies compile time.
    config = Float8DynamicActivationFloat8WeightConfig(
        granularity=PerRow(), set_inductor_config=False
    )
    quantize_(pipe.transformer, config, filter_fn=fp8_linear_filter)
    return "torchao float8 (e4m3, per-row scales) on the blocks' attention and FFN linears"


def apply_options(pipe: Any, options: EngineOptions, device: str) -> dict[str, Any]:
    """Apply the options to a loaded pipeline; returns what was actually applied, and why."""
    check_seq_multiple()
    applied: dict[str, Any] = {}
    backend, why = choose_backend(options.attention, device)
    if backend != "native":
        set_backend(pipe.transformer, backend)
    applied["attention_backend"] = backend
    applied["attention_reason"] = why
    if options.fp8:
        applied["fp8"] = enable_fp8(pipe, device)
    if options.vae_tiling == "on":
        pipe.vae.enable_tiling()
    applied["vae_tiling"] = options.vae_tiling
    if options.compile:
        applied["compile"] = enable_compile(pipe.transformer, options.compile_backend)
    return applied


def vae_tiling_for(vae: Any, mode: str, width: int, height: int) -> bool:
    """With ``auto``, tile the VAE decode only for large images; returns whether it tiles."""
    if mode != "auto":
        return mode == "on"
    tile = width * height > TILING_AUTO_PIXELS
    if tile:
        vae.enable_tiling()
    else:
        vae.disable_tiling()
    return tile
