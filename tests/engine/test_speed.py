"""Speed options on a CPU: each degrades with a notice, except FP8, which is refused; the
prompt cache; VAE tiling; and torch.compile matching eager output."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from steadygen.engine.engine import Engine
from steadygen.engine.models import TINY
from steadygen.engine.speed import (
    TILING_AUTO_PIXELS,
    EngineOptions,
    PromptCache,
    choose_backend,
    enable_fp8,
    mask_safe_attention,
    set_backend,
    vae_tiling_for,
)
from steadygen.errors import ConfigError

# -- attention backend --------------------------------------------------------------------


@pytest.mark.parametrize("requested", ["flash", "flash3", "cudnn"])
def test_gpu_backends_fall_back_to_sdpa_on_cpu_with_a_notice(
    requested: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="steadygen.engine"):
        backend, why = choose_backend(requested, "cpu")
    assert backend == "native"
    assert requested in why and "CUDA" in why and "SDPA" in why
    notices = [r for r in caplog.records if r.name == "steadygen.engine"]
    assert len(notices) == 1 and requested in notices[0].getMessage()


@pytest.mark.parametrize("requested", ["auto", "sdpa"])
def test_auto_and_sdpa_on_cpu_are_native_without_a_warning(
    requested: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="steadygen.engine"):
        backend, why = choose_backend(requested, "cpu")
    assert backend == "native" and why
    assert not caplog.records


def test_engine_with_flash_on_cpu_runs_on_sdpa(
    tiny_checkpoint: Path, cache_dir: Path, make_req: Any
) -> None:
    eng = Engine.create(
        model=TINY, device="cpu", cache_dir=cache_dir, options=EngineOptions(attention="flash")
    )
    result = eng.generate(make_req(steps=2))
    applied = result.metadata["options"]["applied"]
    assert applied["attention_backend"] == "native"
    assert "needs a CUDA GPU" in applied["attention_reason"]
    assert result.metadata["options"]["attention"] == "flash"  # what was asked, kept


def test_mask_safe_attention_swaps_a_mask_refusing_backend_for_one_call(
    tiny_checkpoint: Path, cache_dir: Path
) -> None:
    eng = Engine.create(model=TINY, device="cpu", cache_dir=cache_dir)
    eng.load()
    transformer = eng.pipe.transformer

    def backends() -> set[str]:
        return {
            str(getattr(m.processor, "_attention_backend", None))
            for m in transformer.modules()
            if getattr(m, "processor", None) is not None
        }

    set_backend(transformer, "_native_flash")
    assert backends() == {"AttentionBackendName._NATIVE_FLASH"}
    with mask_safe_attention(transformer, "_native_flash", needs_mask=True):
        assert backends() == {"AttentionBackendName.NATIVE"}
    assert backends() == {"AttentionBackendName._NATIVE_FLASH"}
    with mask_safe_attention(transformer, "_native_flash", needs_mask=False):
        assert backends() == {"AttentionBackendName._NATIVE_FLASH"}
    with mask_safe_attention(transformer, "_native_cudnn", needs_mask=True):
        assert backends() == {"AttentionBackendName._NATIVE_FLASH"}  # cuDNN takes masks


# -- FP8 ----------------------------------------------------------------------------------


def test_fp8_on_cpu_is_refused_clearly(tiny_checkpoint: Path, cache_dir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        enable_fp8(None, "cpu")
    message = str(info.value)
    assert "FP8" in message and "8.9" in message and "CPU" in message
    assert "without --fp8" in message
    # Refused when the engine is created, before any weights are loaded.
    with pytest.raises(ConfigError, match="FP8 needs an NVIDIA GPU"):
        Engine.create(
            model=TINY, device="cpu", cache_dir=cache_dir, options=EngineOptions(fp8=True)
        )


# -- prompt cache -------------------------------------------------------------------------


def test_prompt_cache_is_lru() -> None:
    cache = PromptCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)  # evicts b, the least recently used
    assert cache.get("b") is None
    assert cache.get("a") == 1 and cache.get("c") == 3
    cache.put("a", 10)  # replace in place
    assert cache.get("a") == 10
    assert (cache.hits, cache.misses) == (4, 1)


def test_prompt_cache_size_zero_keeps_nothing() -> None:
    cache = PromptCache(0)
    cache.put("a", 1)
    assert cache.get("a") is None and cache.misses == 1 and cache.hits == 0


def test_repeated_prompt_is_a_cache_hit_with_the_same_image(engine: Any, make_req: Any) -> None:
    req = make_req(prompt="a prompt seen once before: cache test", steps=2)
    first = engine.generate(req)
    second = engine.generate(req)
    assert not first.timings.prompt_cache_hit and second.timings.prompt_cache_hit
    assert np.asarray(first.images[0]).tobytes() == np.asarray(second.images[0]).tobytes()
    # with CFG on, the negative prompt is part of the key
    cfg = make_req(prompt=req.prompt, steps=2, guidance=2.0, negative_prompt="cache neg")
    assert not engine.generate(cfg).timings.prompt_cache_hit
    assert engine.generate(cfg).timings.prompt_cache_hit


def test_prompt_cache_off(tiny_checkpoint: Path, cache_dir: Path, make_req: Any) -> None:
    eng = Engine.create(
        model=TINY,
        device="cpu",
        cache_dir=cache_dir,
        options=EngineOptions(prompt_cache_size=0),
    )
    hits = [eng.generate(make_req(steps=1)).timings.prompt_cache_hit for _ in range(2)]
    assert hits == [False, False]


# -- VAE tiling ---------------------------------------------------------------------------


def test_vae_tiling_auto_tiles_large_images_only(engine: Any) -> None:
    vae = engine.pipe.vae
    try:
        assert vae_tiling_for(vae, "auto", 1024, 1024) is False and not vae.use_tiling
        assert 2048 * 2048 > TILING_AUTO_PIXELS >= 1536 * 1536
        assert vae_tiling_for(vae, "auto", 2048, 2048) is True and vae.use_tiling
        assert vae_tiling_for(vae, "auto", 1536, 1536) is False and not vae.use_tiling
        assert vae_tiling_for(vae, "on", 256, 256) is True
        assert vae_tiling_for(vae, "off", 2048, 2048) is False
    finally:
        vae.disable_tiling()


def test_tuned_vae_decode_is_channels_last_and_decodes_the_same_image() -> None:
    """The tuned decode's layout change, run on a CPU (forced as if on CUDA: cuDNN's
    autotuning flag is harmless here): the same pixels up to rounding."""
    import torch

    from steadygen.engine.speed import vae_decode_mode
    from steadygen.engine.tiny import build_tiny_pipeline

    vae = build_tiny_pipeline().vae
    latents = torch.randn(1, 16, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        plain = vae.decode(latents, return_dict=False)[0]
        before = torch.backends.cudnn.benchmark
        with vae_decode_mode(vae, "tuned", cuda=True):
            assert torch.backends.cudnn.benchmark is True
            tuned = vae.decode(latents, return_dict=False)[0]
        assert torch.backends.cudnn.benchmark is before  # restored
    conv = next(m for m in vae.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert float((tuned - plain).norm() / plain.norm()) < 1e-4  # fp32 reordering: ~1e-5
    with vae_decode_mode(vae, "tuned", cuda=False):  # on a CPU engine: nothing changes
        assert torch.backends.cudnn.benchmark is before


# -- compile ------------------------------------------------------------------------------


# Importing the inductor emits a torch.jit deprecation from inside torch.
@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.*")
def test_compile_on_cpu_matches_eager(
    engine: Any, tiny_checkpoint: Path, cache_dir: Path, make_req: Any
) -> None:
    """Regional compile of the transformer blocks; tolerance, not bits: fused kernels round
    differently (measured here: at most 1/255 on about 0.002 % of pixels)."""
    compiled = Engine.create(
        model=TINY, device="cpu", cache_dir=cache_dir, options=EngineOptions(compile=True)
    )
    req = make_req(steps=3, seed=5)
    result = compiled.generate(req)
    assert "repeated blocks" in compiled.applied["compile"]
    eager = engine.generate(req)
    a = np.asarray(result.images[0]).astype(np.float64)
    b = np.asarray(eager.images[0]).astype(np.float64)
    assert np.abs(a - b).max() <= 4
    assert np.linalg.norm(a - b) <= 0.01 * np.linalg.norm(b)
    # a second call of the same shape reuses the compiled blocks and gives the same bits
    again = compiled.generate(req)
    assert np.asarray(again.images[0]).tobytes() == np.asarray(result.images[0]).tobytes()
