"""Attention backends: which kernel the transformer's attention processors call.

``auto`` times the candidates at the model's own shape and keeps the fastest call that
succeeded (a name is no guide: on torch 2.10+ with cuDNN 9.15+ plain SDPA already picks
cuDNN attention on sm90). Backends that refuse an attention mask are swapped for SDPA for
the one call that needs a mask (``mask_safe_attention``).
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

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
SEQ_MULTI_OF = 32  # Z-Image pads captions and images to this; checked against diffusers below

# -- choosing ------------------------------------------------------------------------------


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


def fa3_probe(device: str) -> bool:
    """FlashAttention-3 usable *and* a call with the arguments diffusers passes succeeds."""
    if not fa3_usable():
        return False
    return time_backends(device, ["_flash_3"], seq=160, heads=2, head_dim=128, iters=1)[
        "_flash_3"] is not None


def time_backends(
    device: str, names: Sequence[str], seq: int = 4128, heads: int = 30, head_dim: int = 128,
    iters: int = 10,
) -> dict[str, float | None]:
    """Milliseconds per attention call for each backend at Z-Image's shape (1024x1024 and a
    32-token caption by default), called as diffusers' Z-Image processor calls it; None for
    a backend whose call fails here."""
    import torch
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    try:
        q, k, v = (torch.randn(1, seq, heads, head_dim, device=device, dtype=dtype)
                   for _ in range(3))
    except Exception as exc:  # no such device here
        log.info("cannot time attention on %s: %s", device, exc)
        return {n: None for n in names}

    def call(name: str) -> Any:
        return dispatch_attention_fn(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False,
                                     backend=name)

    out: dict[str, float | None] = {}
    for name in names:
        try:
            call(name)
            if cuda:
                torch.cuda.synchronize(torch.device(device))
            t0 = time.perf_counter()
            for _ in range(iters):
                call(name)
            if cuda:
                torch.cuda.synchronize(torch.device(device))
            out[name] = (time.perf_counter() - t0) * 1000.0 / iters
        except Exception as exc:  # a kernel this card or build cannot run is a result too
            log.info("attention backend %s cannot run here: %s", name, exc)
            out[name] = None
    return out


def auto_candidates(cap: tuple[int, int]) -> list[str]:
    names = ["native"]
    if cap >= (8, 0):
        names += ["_native_cudnn", "_native_flash"]
    if cap[0] == 9 and fa3_usable():
        names.append("_flash_3")  # kept only if its timed call succeeds
    return names


def choose_backend(
    requested: str, device: str, shape: tuple[int, int, int] | None = None,
    timer: Any = None,
) -> tuple[str, str]:
    """(diffusers backend name, a sentence on why), never raising: unavailable means SDPA.

    ``auto`` times every backend the card may have at the model's attention shape
    ``(sequence, heads, head_dim)`` and takes the fastest call that succeeded: on torch 2.10+
    with cuDNN 9.15+ plain SDPA already picks cuDNN attention on sm90, and diffusers'
    ``_native_cudnn`` adds copies, so a name is no guide. FlashAttention-3 counts only if its
    call succeeds. ``mask_safe_attention`` covers the calls where a mask is needed.
    """
    cap = _capability(device)
    if requested == "sdpa":
        return "native", "SDPA as asked"
    if cap is None:
        if requested != "auto":
            log.warning("attention %s needs a CUDA GPU; using SDPA", requested)
            return "native", f"{requested} needs a CUDA GPU; using SDPA"
        return "native", "SDPA (CPU)"
    if requested == "auto":
        timer = timer or time_backends
        seq, heads, head_dim = shape or (4128, 30, 128)
        times = timer(device, auto_candidates(cap), seq=seq, heads=heads, head_dim=head_dim)
        ok = {n: ms for n, ms in times.items() if ms is not None}
        if not ok:
            return "native", "no backend could be timed; using SDPA"
        best = min(ok, key=lambda n: ok[n])
        listed = ", ".join(f"{n} {ms:.3f} ms" for n, ms in sorted(ok.items(), key=lambda x: x[1]))
        return best, f"fastest measured at seq {seq}: {listed}"
    if requested == "flash3":
        if cap[0] == 9 and fa3_probe(device):
            return "_flash_3", "FlashAttention-3 on Hopper (a probe call succeeded)"
        log.warning("FlashAttention-3 needs a Hopper GPU and flash_attn_interface; using SDPA")
        return "native", "FlashAttention-3 unavailable here; using SDPA"
    if requested == "cudnn" and cap >= (8, 0):
        return "_native_cudnn", "cuDNN attention through SDPA"
    if requested == "flash" and cap >= (8, 0):
        return "_native_flash", "PyTorch flash SDPA"
    log.warning("attention %s is not available on sm%d%d; using SDPA", requested, *cap)
    return "native", f"{requested} unavailable on sm{cap[0]}{cap[1]}; using SDPA"


def attention_shape(transformer: Any, width: int = 1024, height: int = 1024,
                    caption_tokens: int = 32) -> tuple[int, int, int]:
    """(sequence, heads, head_dim) of the transformer's attention for one image."""
    cfg = transformer.config
    seq = (width // 16) * (height // 16) + caption_tokens
    return seq, int(cfg.n_heads), int(cfg.dim) // int(cfg.n_heads)


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
