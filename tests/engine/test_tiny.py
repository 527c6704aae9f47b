"""zimage-tiny: built offline, with Z-Image-Turbo's component classes, deterministically, and
loadable by the same loader as a real checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from steadygen.engine.models import TINY, availability, builtin_models, resolve_model
from steadygen.engine.tiny import TINY_DIRNAME, ensure_tiny_checkpoint, tiny_dir

COMPONENTS = {
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "Qwen3Model"],
    "tokenizer": ["transformers", "Qwen2Tokenizer"],
    "transformer": ["diffusers", "ZImageTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_model_index_names_the_real_classes(tiny_checkpoint: Path) -> None:
    index = read_json(tiny_checkpoint / "model_index.json")
    assert index["_class_name"] == "ZImagePipeline"
    for name, expected in COMPONENTS.items():
        assert index[name] == expected, name


def test_checkpoint_lives_in_the_cache_dir(tiny_checkpoint: Path, cache_dir: Path) -> None:
    assert tiny_checkpoint == tiny_dir(cache_dir) == cache_dir / "models" / TINY_DIRNAME
    assert ensure_tiny_checkpoint(cache_dir) == tiny_checkpoint  # second call: no rebuild
    assert not list(tiny_checkpoint.parent.glob(".build-*"))  # no half-built leftovers


def test_component_configs_match_z_image_turbo(tiny_checkpoint: Path) -> None:
    scheduler = read_json(tiny_checkpoint / "scheduler" / "scheduler_config.json")
    assert scheduler["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    assert scheduler["shift"] == 3.0 and scheduler["use_dynamic_shifting"] is False
    vae = read_json(tiny_checkpoint / "vae" / "config.json")
    assert vae["latent_channels"] == 16
    assert vae["scaling_factor"] == pytest.approx(0.3611)
    assert vae["shift_factor"] == pytest.approx(0.1159)
    transformer = read_json(tiny_checkpoint / "transformer" / "config.json")
    text = read_json(tiny_checkpoint / "text_encoder" / "config.json")
    # the rules that make a Z-Image transformer work (research/zimage.md)
    assert transformer["dim"] // transformer["n_heads"] == sum(transformer["axes_dims"])
    assert all(d % 2 == 0 for d in transformer["axes_dims"])
    assert transformer["cap_feat_dim"] == text["hidden_size"]
    assert transformer["in_channels"] == vae["latent_channels"]
    assert transformer["axes_lens"][0] > 512  # longer than the padded caption
    assert min(transformer["axes_lens"][1:]) > 2048 // 16  # the largest image's token side


def test_tokenizer_has_a_chat_template_and_pad_token(tiny_checkpoint: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_checkpoint / "tokenizer", local_files_only=True)
    assert type(tok).__name__.startswith("Qwen2Tokenizer")
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id is not None
    assert tok.chat_template
    text = tok.apply_chat_template(
        [{"role": "user", "content": "a lighthouse at dusk"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text.startswith("<|im_start|>user\na lighthouse at dusk<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")
    ids = tok("a lighthouse at dusk")["input_ids"]
    assert ids and tok.decode(ids) == "a lighthouse at dusk"


def test_loaded_pipeline_has_the_real_classes(tiny_engine: Any) -> None:
    pipe = tiny_engine.pipe
    assert type(pipe).__name__ == "ZImagePipeline"
    for name, (_, cls) in COMPONENTS.items():
        assert type(getattr(pipe, name)).__name__ == cls, name
    assert pipe.tokenizer.chat_template and pipe.tokenizer.pad_token is not None


def test_checkpoint_dir_resolves_as_local_model(tiny_checkpoint: Path) -> None:
    spec = resolve_model(str(tiny_checkpoint))
    assert spec.kind == "local" and spec.name == TINY_DIRNAME
    assert availability(spec, cuda_available=False)[0] is True
    # (generating with it: tests/engine/test_engine.py, local checkpoint test)


def test_tiny_is_registered_and_runs_without_cuda() -> None:
    spec = builtin_models()[TINY]
    assert spec.kind == "tiny" and not spec.needs_cuda and spec.noise_only
    assert spec.default_side == 256
    ok, why = availability(spec, cuda_available=False)
    assert ok and "offline" in why


def test_build_is_deterministic(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A second build in a fresh cache dir gives byte-identical files, weights included."""
    other = ensure_tiny_checkpoint(tmp_path / "cache")
    assert other != tiny_checkpoint
    files = sorted(p.relative_to(tiny_checkpoint) for p in tiny_checkpoint.rglob("*"))
    files = [f for f in files if (tiny_checkpoint / f).is_file()]
    assert files == sorted(p.relative_to(other) for p in other.rglob("*") if p.is_file()), (
        "the two builds hold different files"
    )
    weights = [f for f in files if f.suffix == ".safetensors"]
    assert len(weights) == 3  # text encoder, transformer, VAE
    for rel in files:
        assert (tiny_checkpoint / rel).read_bytes() == (other / rel).read_bytes(), rel
