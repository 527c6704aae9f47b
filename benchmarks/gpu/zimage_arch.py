"""Z-Image-Turbo's architecture with random weights, built in place on the device, and the
machine's yardsticks (FLOPs per image, bf16 matrix rate, attention kernels).

Full size is the shipped configuration (../shared/DESIGN.md, research/zimage.md): the
6.15 B transformer, the Qwen3-4B text encoder, the FLUX VAE, FlowMatch Euler with shift 3.
Reduced is the same classes at toy widths, for a CPU. Weights are random (GPU speed does not
depend on weight values); no file is read and nothing is downloaded: the tokenizer is trained
in-process, like steadygen/engine/tiny.py does.

Weights are made where they live: every module is constructed under ``torch.device(device)``
with bf16 as the default dtype, so a full build never allocates 24 GB of fp32 on the host.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

TRANSFORMER_FULL: dict[str, Any] = dict(
    all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840, n_layers=30,
    n_refiner_layers=2, n_heads=30, n_kv_heads=30, norm_eps=1e-5, qk_norm=True,
    cap_feat_dim=2560, rope_theta=256.0, t_scale=1000.0, axes_dims=[32, 48, 48],
    axes_lens=[1536, 512, 512],
)
TEXT_FULL: dict[str, Any] = dict(
    hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, vocab_size=151936, rope_theta=1e6,
    rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=40960,
)
VAE_FULL: dict[str, Any] = dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512],
    layers_per_block=2, latent_channels=16, norm_num_groups=32, sample_size=1024,
    scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
    use_post_quant_conv=False, mid_block_add_attention=True, force_upcast=True,
)
# Toy widths with the same classes and the same constraints (head_dim = sum(axes_dims),
# cap_feat_dim = text hidden size, 4 VAE blocks so sides are multiples of 16).
TRANSFORMER_REDUCED: dict[str, Any] = dict(
    TRANSFORMER_FULL, dim=64, n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2,
    cap_feat_dim=32, axes_dims=[8, 12, 12], axes_lens=[1024, 64, 64],
)
TEXT_REDUCED: dict[str, Any] = dict(
    TEXT_FULL, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=2, num_key_value_heads=2, head_dim=16, vocab_size=2048,
    max_position_embeddings=1024,
)
VAE_REDUCED: dict[str, Any] = dict(
    VAE_FULL, block_out_channels=[16, 16, 32, 32], layers_per_block=1, norm_num_groups=16,
    sample_size=128,
)
SCHEDULER_SHIFT = 3.0


@dataclass(frozen=True)
class Arch:
    name: str
    transformer: dict[str, Any]
    text: dict[str, Any]
    vae: dict[str, Any]


FULL = Arch("full", TRANSFORMER_FULL, TEXT_FULL, VAE_FULL)
REDUCED = Arch("reduced", TRANSFORMER_REDUCED, TEXT_REDUCED, VAE_REDUCED)

# Timed runs use a different prompt each (so no text-encoder cache can help) of one caption
# bucket (<= 32 tokens with the chat template), so every run does the same work.
PROMPT_BASE = "a cinematic photo of a lighthouse on a cliff at dusk,"
PROMPT_WORDS = (
    "red", "blue", "green", "gold", "silver", "violet", "amber", "teal", "ivory", "coral",
    "misty", "stormy", "calm", "windy", "snowy", "rainy", "sunny", "foggy", "starry", "hazy",
    "warm", "cold", "bright", "dark", "soft", "sharp", "quiet", "wild", "old", "new",
    "tall", "small", "wide", "deep", "high", "low", "near", "far", "early", "late",
)
_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def prompt(i: int) -> str:
    return f"{PROMPT_BASE} {PROMPT_WORDS[i % len(PROMPT_WORDS)]} light"


def build_tokenizer(vocab_size: int = 2048) -> Any:
    """A byte-level BPE trained in-process on the benchmark's prompts, as Qwen2Tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    corpus = [prompt(i) for i in range(len(PROMPT_WORDS))] + ["user assistant system"] * 4
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    ))
    with tempfile.TemporaryDirectory() as tmp:
        bpe.save(os.path.join(tmp, "tokenizer.json"))
        tok = Qwen2Tokenizer.from_pretrained(
            tmp, pad_token="<|endoftext|>", eos_token="<|im_end|>", unk_token=None
        )
    tok.chat_template = _CHAT_TEMPLATE
    return tok


def caption_tokens(tokenizer: Any, text: str) -> int:
    """Tokens the transformer sees for ``text`` (chat template applied, padding dropped)."""
    templated = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    return len(tokenizer(templated)["input_ids"])


@dataclass
class Built:
    pipe: Any
    seconds: float
    params: dict[str, int] = field(default_factory=dict)
    weight_bytes: dict[str, int] = field(default_factory=dict)


def _size(module: Any) -> tuple[int, int]:
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)


def build_pipeline(arch: Arch, device: str, dtype: Any, seed: int = 0) -> Built:
    """A ZImagePipeline of ``arch`` with random weights, constructed on ``device``."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3Model

    t0 = time.monotonic()
    tokenizer = build_tokenizer()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device), torch.no_grad():
            torch.manual_seed(seed)
            text_encoder = Qwen3Model(Qwen3Config(**arch.text)).eval()
            torch.manual_seed(seed + 1)
            transformer = ZImageTransformer2DModel(**arch.transformer).eval()
            torch.manual_seed(seed + 2)
            vae = AutoencoderKL(**arch.vae).eval()
    finally:
        torch.set_default_dtype(previous)
    for module in (text_encoder, transformer, vae):  # a library may pick its own default
        if any(p.dtype != dtype for p in module.parameters()):
            module.to(dtype)
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=SCHEDULER_SHIFT, use_dynamic_shifting=False
    )
    pipe = ZImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    built = Built(pipe=pipe, seconds=time.monotonic() - t0)
    for name, module in (("transformer", transformer), ("text_encoder", text_encoder),
                         ("vae", vae)):
        built.params[name], built.weight_bytes[name] = _size(module)
    return built


def count_flops(arch: Arch, width: int, height: int, steps: int, cap_tokens: int) -> dict:
    """FLOPs per image, counted with FlopCounterMode on the meta device (no memory, no GPU).

    The text encoder runs on 512 tokens (diffusers pads every prompt to max_length); the
    transformer once per step on the image tokens plus the caption (padded to 32 inside);
    the VAE decodes once. Matrix products, convolutions and attention are what it counts.
    """
    import torch
    from diffusers import AutoencoderKL, ZImageTransformer2DModel
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import Qwen3Config, Qwen3Model

    def counted(fn: Any) -> int:
        mode = FlopCounterMode(display=False)
        with mode, torch.no_grad():
            fn()
        return int(mode.get_total_flops())

    meta, bf16 = torch.device("meta"), torch.bfloat16
    previous = torch.get_default_dtype()
    torch.set_default_dtype(bf16)
    try:
        with meta:
            transformer = ZImageTransformer2DModel(**arch.transformer)
            text = Qwen3Model(Qwen3Config(**arch.text))
            vae = AutoencoderKL(**arch.vae)
    finally:
        torch.set_default_dtype(previous)
    lat_h, lat_w = height // 8, width // 8
    step = counted(lambda: transformer(
        [torch.empty(16, 1, lat_h, lat_w, device=meta, dtype=bf16)],
        torch.tensor([0.5], device=meta),
        [torch.empty(cap_tokens, arch.transformer["cap_feat_dim"], device=meta, dtype=bf16)],
    ))
    # attention_mask=None: the all-ones mask path calls .item(), which meta tensors refuse;
    # the count is the same (SDPA is counted dense either way).
    encode = counted(lambda: text(
        input_ids=torch.zeros(1, 512, dtype=torch.long, device=meta), output_hidden_states=True
    ))
    decode = counted(lambda: vae.decode(torch.empty(1, 16, lat_h, lat_w, device=meta,
                                                    dtype=bf16)))
    return {
        "method": "torch.utils.flop_counter.FlopCounterMode on the meta device",
        "caption_tokens": cap_tokens,
        "transformer_step": step,
        "text_encoder": encode,
        "vae_decode": decode,
        "per_image": steps * step + encode + decode,
    }


def matmul_rate(device: str, n: int | None = None, iters: int = 20) -> dict:
    """The card's bf16 dense matrix rate: an n x n x n product timed with CUDA events."""
    import torch

    cuda = device.startswith("cuda")
    n = n or (8192 if cuda else 512)
    iters = iters if cuda else 3
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(iters):
            a @ b
        end.record()
        torch.cuda.synchronize()
        seconds = start.elapsed_time(end) / 1000.0
    else:
        t0 = time.perf_counter()
        for _ in range(iters):
            a @ b
        seconds = time.perf_counter() - t0
    flops = 2.0 * n**3 * iters
    return {"n": n, "iters": iters, "seconds": seconds, "flops_per_s": flops / seconds,
            "timer": "cuda events" if cuda else "perf_counter"}


def attention_bench(device: str, seq: int, heads: int, head_dim: int, iters: int = 20) -> dict:
    """Each attention backend diffusers can dispatch to, at Z-Image's shape (batch 1)."""
    import torch
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    from steadygen.engine.speed import fa3_usable

    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    names = ["native", "_native_math"]
    if cuda:
        names = ["native", "_native_cudnn", "_native_flash", "_native_efficient"]
        if fa3_usable():
            names.append("_flash_3")
    shape = (1, seq, heads, head_dim)  # diffusers' layout: batch, sequence, heads, dim
    q, k, v = (torch.randn(shape, device=device, dtype=dtype) for _ in range(3))
    flops = 4.0 * seq * seq * heads * head_dim
    out: dict[str, Any] = {"shape": list(shape), "dtype": str(dtype), "backends": {}}
    for name in names:
        try:
            for _ in range(2):
                dispatch_attention_fn(q, k, v, backend=name)
            if cuda:
                torch.cuda.synchronize()
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                for _ in range(iters):
                    dispatch_attention_fn(q, k, v, backend=name)
                e.record()
                torch.cuda.synchronize()
                sec = s.elapsed_time(e) / 1000.0 / iters
            else:
                t0 = time.perf_counter()
                for _ in range(3):
                    dispatch_attention_fn(q, k, v, backend=name)
                sec = (time.perf_counter() - t0) / 3
            out["backends"][name] = {"ms": sec * 1000.0, "tflops": flops / sec / 1e12}
        except Exception as exc:  # a backend that cannot run here is a result too
            out["backends"][name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    return out
