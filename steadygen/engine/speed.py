"""Speed options for the engine: attention backend, regional compile, FP8, VAE tiling and
the text-encoder output cache. Each option degrades with one clear notice where the machine
cannot do it, except FP8, which is refused: silently running in bf16 would mislead.

Compile is watched, not just switched on: ``CompileWatch`` counts the Dynamo compilations a
generation paid and how long they stalled it, and ``move_compile_into_warmup`` books that
time as warm-up instead of as slow steps, so attribution can call it cold start.

Compile is per shape: static shapes (``dynamic=False``), so each warm shape bucket (size x
caption bucket x batch) gets kernels specialised for it, paid at warm-up. CUDA graphs, true-
length prompt encoding and memory modes live in graphs.py, encode.py and memory.py.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from typing import Any

from steadygen.engine.attention import (  # noqa: F401  (re-exported: callers use speed.*)
    BACKENDS,
    MASK_FREE_ONLY,
    SEQ_MULTI_OF,
    _capability,
    attention_shape,
    check_seq_multiple,
    choose_backend,
    fa3_probe,
    fa3_usable,
    mask_safe_attention,
    needs_attention_mask,
    set_backend,
    time_backends,
)
from steadygen.errors import ConfigError

log = logging.getLogger("steadygen.engine")
TILING_AUTO_PIXELS = 1536 * 1536

# The compiled block has a handful of variants (modulated or not, batch 1 or more, with or
# without a mask, per attention backend, bf16 or FP8). Dynamo's default of 8 per code object
# is shared by all 34 blocks; past it Dynamo silently runs eager.
RECOMPILE_LIMIT = 256  # static shapes: one entry per shape bucket and variant
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")
FP8_MIN_CAPABILITY = (8, 9)
FP8_PREFIXES = ("layers.", "noise_refiner.")  # not context_refiner: ~32 caption tokens


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
    memory: str = "high"  # auto | high | balanced | low (memory.py)
    cuda_graphs: bool = False  # one CUDA graph per warm shape for the transformer (graphs.py)
    exact_length_prompts: bool = True  # encode the real tokens only (encode.py)
    vae_decode: str = "plain"  # plain | tuned (cuDNN autotuning + channels-last, CUDA only)

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


# -- compile ----------------------------------------------------------------------------------


def enable_compile(transformer: Any, backend: str = "inductor") -> str:
    """torch.compile each repeated block (ZImageTransformerBlock) with static shapes.

    Regional, not whole-model: the 34 blocks share their compiled code, so one shape costs
    one compile of a block, not of the model. Static (``dynamic=False``): each shape bucket
    (size x 32-token caption bucket x batch, with or without a mask) gets kernels made for
    it, compiled at warm-up; a request in a shape warm-up did not cover compiles once, and
    that compile is booked as cold start. ``CompileWatch`` counts compiles and graph breaks.
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
    names = set(getattr(transformer, "_repeated_blocks", ()) or ())
    compiled: dict[type, Any] = {}
    for module in transformer.modules():
        cls = type(module)
        if cls.__name__ not in names:
            continue
        if cls not in compiled:  # one compiled function per block class: shared code
            compiled[cls] = torch.compile(cls.forward, fullgraph=False, dynamic=False,
                                          backend=backend)
        module.forward = functools.partial(_contiguous_call, compiled[cls], module)
    return f"repeated blocks ({', '.join(sorted(names))}), static shapes per bucket, {backend}"


def _contiguous_call(fn: Any, module: Any, *args: Any, **kwargs: Any) -> Any:
    """Static shapes guard on strides too: the caption's RoPE table arrives as a slice whose
    stride follows the exact caption length; made contiguous, only its bucket matters."""
    args = tuple(_contiguous(a) for a in args)
    kwargs = {k: _contiguous(v) for k, v in kwargs.items()}
    return fn(module, *args, **kwargs)


def _contiguous(value: Any) -> Any:
    """The tensor with row-major strides, including those of size-1 dimensions (which
    ``.contiguous()`` leaves alone and Dynamo still guards on); copies only when needed."""
    import torch

    if not isinstance(value, torch.Tensor):
        return value
    expected, stride = [], 1
    for size in reversed(value.shape):
        expected.append(stride)
        stride *= size
    if tuple(reversed(expected)) == value.stride():
        return value
    return value.clone(memory_format=torch.contiguous_format)


def disable_compile(transformer: Any) -> None:
    """Back to eager blocks (the benchmark lets compiled and eager configurations share
    weights)."""
    for module in transformer.modules():
        if isinstance(module.__dict__.get("forward"), functools.partial):
            del module.forward


# Extra warm-up requests when compile is on (on top of each configured size at n=1, no CFG):
# a batch of two, and CFG with a negative prompt in another 32-token bucket (the masked
# variant and, for a mask-refusing backend, the SDPA fallback).
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
    graph_breaks: int = 0  # Dynamo graph breaks met while the watch was open (all threads)
    _thread: int = 0
    _open: dict[str, tuple[float, str]] = field(default_factory=dict)
    _handler: Any = None
    _graphs_before: int = 0
    _breaks_before: int = 0

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
        self._breaks_before = sum(counters["graph_break"].values())
        self._handler = getattr(torch._dynamo, "callback_handler", None)
        if self._handler is not None:
            self._handler.register_start_callback(self._on_start)
            self._handler.register_end_callback(self._on_end)
        else:
            self._graphs_before = counters["stats"]["unique_graphs"]
        return self

    def __exit__(self, *exc: object) -> None:
        from torch._dynamo.utils import counters

        self.graph_breaks = sum(counters["graph_break"].values()) - self._breaks_before
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
    """Quantize the attention and feed-forward projections of the blocks that see the image
    tokens only (the 30 main layers and the noise refiner).

    The caption refiner sees about 32 tokens: quantising activations per row costs more
    than the FP8 matrix product saves. Embedders, the adaLN modulation (one row per image)
    and the final layer stay in bf16, as FP8 serving recipes for DiTs do; _scaled_mm needs
    both dimensions divisible by 16.
    """
    import torch

    if not isinstance(module, torch.nn.Linear):
        return False
    if not fqn.startswith(FP8_PREFIXES) or "adaLN" in fqn:
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
    layers = fp8_layers(pipe.transformer)
    quantize_(pipe.transformer, config, filter_fn=fp8_linear_filter)
    return (f"torchao float8 (e4m3, per-row scales) on {len(layers)} attention and FFN "
            f"linears of {', '.join(sorted({n.split('.')[0] for n in layers}))}; caption "
            "refiner, embedders, modulation and final layer in bf16")


def fp8_layers(transformer: Any) -> list[str]:
    """The names of the linears ``enable_fp8`` quantizes."""
    return [n for n, m in transformer.named_modules() if fp8_linear_filter(m, n)]


def apply_options(pipe: Any, options: EngineOptions, device: str) -> dict[str, Any]:
    """Apply the options to a loaded pipeline; returns what was actually applied, and why."""
    check_seq_multiple()
    applied: dict[str, Any] = {}
    backend, why = choose_backend(options.attention, device, attention_shape(pipe.transformer))
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
    cuda = device.startswith("cuda")
    applied["vae_decode"] = options.vae_decode if cuda or options.vae_decode == "plain" else (
        "plain: tuned decode needs CUDA (cuDNN)")
    applied["exact_length_prompts"] = options.exact_length_prompts
    return applied


def caption_buckets(caption_lengths: Sequence[int]) -> tuple[int, ...]:
    """Each caption's length padded to the 32-token bucket the transformer pads it to."""
    return tuple(-(-int(n) // SEQ_MULTI_OF) * SEQ_MULTI_OF for n in caption_lengths)


@contextmanager
def vae_decode_mode(vae: Any, mode: str, cuda: bool):
    """``tuned``: cuDNN autotuning (a new size pays the search once, at its first run) and
    channels-last activations for the decode; only on CUDA, where cuDNN runs the convs."""
    if mode != "tuned" or not cuda:
        yield
        return
    import torch

    if getattr(vae, "_steadygen_channels_last", False) is False:
        vae.to(memory_format=torch.channels_last)
        vae._steadygen_channels_last = True
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


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
