"""Speed options for the engine: attention backend, regional compile, FP8, VAE tiling and
the text-encoder output cache. Each option degrades with one clear notice where the machine
cannot do it, except FP8, which is refused: silently running in bf16 would mislead."""

from __future__ import annotations

import importlib.util
import logging
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import asdict, dataclass
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
MASK_FREE_ONLY = {"_native_flash", "_flash_3", "flash"}  # these refuse an attention mask
TILING_AUTO_PIXELS = 1536 * 1536


@dataclass(frozen=True)
class EngineOptions:
    attention: str = "auto"  # auto | sdpa | flash | flash3 | cudnn
    compile: bool = False  # torch.compile of the transformer's repeated blocks
    fp8: bool = False  # torchao float8 dynamic activation + weight, CUDA sm89+ only
    vae_tiling: str = "auto"  # auto (large sizes only) | on | off
    prompt_cache_size: int = 32  # text-encoder outputs kept per prompt text; 0 is off
    empty_cache_per_request: bool = False  # the known-bad case, for benchmarks

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


def _capability(device: str) -> tuple[int, int] | None:
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability(torch.device(device)))  # type: ignore[return-value]


def choose_backend(requested: str, device: str) -> tuple[str, str]:
    """(diffusers backend name, a sentence on why), never raising: unavailable means SDPA."""
    cap = _capability(device)
    if requested == "sdpa":
        return "native", "SDPA as asked"
    if cap is None:
        if requested != "auto":
            log.warning("attention %s needs a CUDA GPU; using SDPA", requested)
            return "native", f"{requested} needs a CUDA GPU; using SDPA"
        return "native", "SDPA (CPU)"
    if requested in ("auto", "flash3"):
        if cap[0] == 9 and importlib.util.find_spec("flash_attn_interface") is not None:
            return "_flash_3", "FlashAttention-3 on Hopper"
        if requested == "flash3":
            log.warning("FlashAttention-3 needs a Hopper GPU and flash_attn_interface; using SDPA")
            return "native", "FlashAttention-3 unavailable here; using SDPA"
    if requested in ("auto", "cudnn") and cap >= (8, 0):
        return "_native_cudnn", "cuDNN attention through SDPA"
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


def apply_options(pipe: Any, options: EngineOptions, device: str) -> dict[str, Any]:
    """Apply the options to a loaded pipeline; returns what was actually applied, and why."""
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
        pipe.transformer.compile_repeated_blocks(fullgraph=False, dynamic=True)
        applied["compile"] = "repeated blocks (ZImageTransformerBlock), dynamic shapes"
    return applied


def enable_fp8(pipe: Any, device: str) -> str:
    cap = _capability(device)
    if cap is None or cap < (8, 9):
        where = "this CPU" if cap is None else f"sm{cap[0]}{cap[1]}"
        raise ConfigError(
            f"FP8 needs an NVIDIA GPU with compute capability 8.9 or newer (Ada, Hopper, "
            f"Blackwell); {where} has none. Run without --fp8."
        )
    if importlib.util.find_spec("torchao") is None:
        raise ConfigError("FP8 needs the torchao package: pip install torchao")
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, quantize_

    quantize_(pipe.transformer, Float8DynamicActivationFloat8WeightConfig())
    return "torchao float8 dynamic activation and weight on the transformer"


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
