"""zimage-tiny: a random-weight pipeline with Z-Image-Turbo's component classes, built offline.

It exists so that the very same code path (tokenizer with chat template, Qwen3 text encoder,
ZImageTransformer2DModel, FLUX-style 16-channel AutoencoderKL, FlowMatchEuler scheduler with
shift 3.0, loaded with ``ZImagePipeline.from_pretrained``) runs on a CPU with no model hub.
Its images are noise: the weights are random.

The build is deterministic: a fixed training corpus for the tokenizer and fixed seeds for
the weights, so two machines build byte-identical checkpoints.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# Bump when the architecture below changes, so an old cached build is not reused.
TINY_VERSION = "1"
TINY_DIRNAME = f"zimage-tiny-v{TINY_VERSION}"

_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CORPUS = [
    "a lighthouse at dusk",
    "a photo of a cat sitting on a windowsill",
    "a watercolor painting of mountains and a lake",
    "portrait of an astronaut, studio lighting, 85mm",
    "a bowl of ramen, steam rising, top view",
    "city street at night in the rain, neon reflections",
    "an isometric pixel art castle",
    "user assistant system",
]


def tiny_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / "models" / TINY_DIRNAME


def _build_tokenizer():  # -> Qwen2Tokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS, trainer)
    # Through a saved tokenizer.json so that model_index.json names Qwen2Tokenizer, the
    # class the real checkpoint ships, and a plain from_pretrained loads it back.
    with tempfile.TemporaryDirectory() as tmp:
        bpe.save(os.path.join(tmp, "tokenizer.json"))
        tok = Qwen2Tokenizer.from_pretrained(
            tmp,
            pad_token="<|endoftext|>",
            eos_token="<|im_end|>",
            unk_token=None,
        )
    tok.chat_template = _CHAT_TEMPLATE
    return tok


def build_tiny_transformer():  # -> diffusers.ZImageTransformer2DModel
    """The tiny transformer alone (seed 1), also the base the tiny LoRA is shaped on."""
    import torch
    from diffusers import ZImageTransformer2DModel

    torch.manual_seed(1)
    # head_dim = dim / n_heads = 64 / 2 = 32 = sum(axes_dims); cap_feat_dim = text hidden.
    return ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=64,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        qk_norm=True,
        cap_feat_dim=32,
        axes_dims=[8, 12, 12],
        axes_lens=[1024, 160, 160],  # > 512-token caption + 1; > 2048 / 16 image tokens
    ).eval()


def build_tiny_pipeline():  # -> diffusers.ZImagePipeline
    """Build the tiny pipeline in memory with fixed seeds."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
    )
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = _build_tokenizer()
    torch.manual_seed(0)
    text_encoder = Qwen3Model(
        Qwen3Config(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=16,
            vocab_size=max(512, len(tokenizer)),
            max_position_embeddings=1024,
        )
    ).eval()
    transformer = build_tiny_transformer()
    torch.manual_seed(2)
    # Four blocks, like the real FLUX VAE: 8x spatial, so sides must be multiples of 16.
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[16, 16, 32, 32],
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=16,
        sample_size=256,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False
    )
    return ZImagePipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )


def ensure_tiny_checkpoint(cache_dir: Path) -> Path:
    """Return the saved tiny checkpoint's directory, building it on first use.

    The build goes to a temporary folder beside the target and is renamed into place, so a
    crash mid-build never leaves a half-written checkpoint that later loads fail on.
    """
    target = tiny_dir(cache_dir)
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        build_tiny_pipeline().save_pretrained(tmp, safe_serialization=True)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "model_index.json").is_file():  # not a concurrent builder's win
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
