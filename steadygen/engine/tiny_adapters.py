"""A tiny LoRA and a tiny ControlNet for zimage-tiny, built offline and deterministically.

Like the tiny pipeline (tiny.py), they use the real classes (a PEFT LoRA on the Z-Image
transformer's attention, saved with ``ZImagePipeline.save_lora_weights``; a
``ZImageControlNetModel`` with the Union-2.0 layout: control input of 33 channels = control
latents 16 + mask 1 + masked-image latents 16) so adapters and control run on a CPU. Their
outputs are noise, like the tiny model's.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from steadygen.engine.tiny import TINY_DIRNAME

ADAPTERS_VERSION = "2"
TINY_LORA_NAMES = ("tiny-style", "tiny-character")
TINY_LORA_RANK = 4


@dataclass(frozen=True)
class TinyAdapters:
    lora_dir: Path  # holds tiny-style.safetensors and tiny-character.safetensors
    controlnet_dir: Path  # a ControlNet checkpoint directory


def tiny_adapters_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / "models" / f"{TINY_DIRNAME}-adapters-v{ADAPTERS_VERSION}"


def tiny_lora_state_dict(seed: int) -> dict:
    """A rank-4 LoRA on every attention projection of the tiny transformer, non-zero B so
    that it changes the output."""
    import torch
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    from steadygen.engine.tiny import build_tiny_transformer

    transformer = build_tiny_transformer()
    config = LoraConfig(r=TINY_LORA_RANK, lora_alpha=TINY_LORA_RANK,
                        target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    inject_adapter_in_model(config, transformer)
    generator = torch.Generator().manual_seed(seed)
    state = get_peft_model_state_dict(transformer)
    out = {}
    for key, tensor in sorted(state.items()):
        values = torch.randn(tensor.shape, generator=generator) * 0.05
        out[key] = values.contiguous()  # save_lora_weights adds "transformer."
    return out


def build_tiny_controlnet():  # -> diffusers ZImageControlNetModel
    import torch
    from diffusers import ZImageControlNetModel

    torch.manual_seed(3)
    model = ZImageControlNetModel(
        control_layers_places=[0, 1],
        control_refiner_layers_places=[0],
        control_in_dim=33,
        add_control_noise_refiner="control_noise_refiner",
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        dim=64,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        qk_norm=True,
    ).eval()
    # A trained ControlNet starts from zeroed output projections; random ones here so the
    # control image changes the result, as a trained one does.
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model


def _build(target: Path) -> None:
    from diffusers import ZImagePipeline

    loras = target / "loras"
    loras.mkdir(parents=True)
    for k, name in enumerate(TINY_LORA_NAMES):
        with tempfile.TemporaryDirectory() as tmp:
            ZImagePipeline.save_lora_weights(
                tmp, transformer_lora_layers=tiny_lora_state_dict(seed=10 + k),
                safe_serialization=True,
            )
            shutil.move(Path(tmp) / "pytorch_lora_weights.safetensors",
                        loras / f"{name}.safetensors")
    build_tiny_controlnet().save_pretrained(target / "controlnet", safe_serialization=True)


def ensure_tiny_adapters(cache_dir: Path) -> TinyAdapters:
    """The tiny LoRA folder and ControlNet checkpoint, built on first use (atomically)."""
    target = tiny_adapters_dir(cache_dir)
    done = TinyAdapters(target / "loras", target / "controlnet")
    if (done.controlnet_dir / "config.json").is_file():
        return done
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-adapters-", dir=target.parent))
    try:
        _build(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (done.controlnet_dir / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return done
