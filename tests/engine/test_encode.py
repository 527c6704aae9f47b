"""True-length prompt encoding against diffusers' own padded encoding.

diffusers pads every prompt to 512 tokens and keeps the unpadded rows; Qwen3 is causal, so
those rows cannot depend on the right padding. Checked on the tiny pipeline (fp32) and on a
text encoder of Qwen3-4B's full widths (hidden 2560, 32 query and 8 KV heads of 128, MLP
9728) in bf16: 2 of its 36 layers with random weights, because each layer is causal on its
own and 36 layers of fp32 weights (16 GB) do not fit a CI machine.
"""

from __future__ import annotations

import types
from typing import Any

import pytest
import torch

from steadygen.engine.encode import encode_prompt, encode_prompts_true_length

PROMPTS = ["a lighthouse at dusk", "", "a much longer prompt about a red boat " * 6]


def rel_l2(a: Any, b: Any) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def padded(pipe: Any, prompts: list[str]) -> list[Any]:
    """diffusers' own encoding: padded to 512, then the unpadded rows."""
    with torch.inference_mode():
        return pipe._encode_prompt(list(prompts), device=pipe.text_encoder.device)


def test_true_length_equals_diffusers_on_the_tiny_model(tiny_engine: Any) -> None:
    pipe = tiny_engine.pipe
    reference = padded(pipe, PROMPTS)
    with torch.inference_mode():
        exact = encode_prompts_true_length(pipe, PROMPTS, pipe.text_encoder.device)
    for ref, got in zip(reference, exact, strict=True):
        assert got.shape == ref.shape  # the same kept rows
        assert rel_l2(got, ref) < 1e-5  # fp32: rounding only


def test_full_width_text_encoder_in_bf16_matches_within_bf16_tolerance(
    tiny_engine: Any,
) -> None:
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(0)
    config = Qwen3Config(
        hidden_size=2560, intermediate_size=9728, num_hidden_layers=2,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        vocab_size=len(tiny_engine.pipe.tokenizer), rope_theta=1e6, rms_norm_eps=1e-6,
        max_position_embeddings=40960, tie_word_embeddings=True,
    )
    encoder = Qwen3Model(config).to(torch.bfloat16).eval()
    pipe = types.SimpleNamespace(tokenizer=tiny_engine.pipe.tokenizer, text_encoder=encoder)
    pipe._encode_prompt = types.MethodType(type(tiny_engine.pipe)._encode_prompt, pipe)
    prompts = PROMPTS[:1] + PROMPTS[2:]
    reference = padded(pipe, prompts)
    with torch.inference_mode():
        exact = encode_prompts_true_length(pipe, prompts, "cpu")
    for ref, got in zip(reference, exact, strict=True):
        assert got.shape == ref.shape and got.dtype == torch.bfloat16
        assert rel_l2(got, ref) < 2e-2  # bf16 rounding of a different kernel path


def test_the_engine_gives_the_same_image_either_way(tiny_engine: Any, make_req: Any) -> None:
    pipe = tiny_engine.pipe
    with torch.inference_mode():
        for cfg in (False, True):
            exact = encode_prompt(pipe, "a red boat", "blurry", cfg, exact_length=True)
            plain = encode_prompt(pipe, "a red boat", "blurry", cfg, exact_length=False)
            assert len(exact[1]) == len(plain[1]) == (1 if cfg else 0)
            for a, b in zip(exact[0] + exact[1], plain[0] + plain[1], strict=True):
                assert a.shape == b.shape and rel_l2(a, b) < 1e-5


@pytest.mark.parametrize("exact_length", [True, False])
def test_the_option_is_reported(tiny_engine: Any, exact_length: bool) -> None:
    from steadygen.engine.speed import EngineOptions

    assert EngineOptions(exact_length_prompts=exact_length).to_dict()[
        "exact_length_prompts"] is exact_length
    assert tiny_engine.applied["exact_length_prompts"] is True  # the default
