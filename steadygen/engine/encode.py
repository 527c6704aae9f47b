"""Prompt encoding at the prompt's true length.

diffusers' ``ZImagePipeline._encode_prompt`` pads every prompt to 512 tokens, runs the
Qwen3 text encoder over all 512 and then keeps only the unpadded rows. Qwen3 is a causal
decoder and the padding is on the right, so no kept row ever attends to a pad token: the
kept rows are the same when only the real tokens are encoded. Encoding those alone does the
same work the kept rows need and skips the rest (a 30-token prompt is 6 % of 512).
``tests/engine/test_encode.py`` checks the equality against diffusers' own function.
"""

from __future__ import annotations

from typing import Any

MAX_SEQUENCE_LENGTH = 512  # diffusers' default truncation, kept so long prompts match


def encode_prompts_true_length(
    pipe: Any, prompts: list[str], device: Any, max_sequence_length: int = MAX_SEQUENCE_LENGTH
) -> list[Any]:
    """One embedding tensor per prompt, ``(tokens, hidden)``, as ``_encode_prompt`` returns."""
    out = []
    for text in prompts:
        templated = pipe.tokenizer.apply_chat_template(
            [{"role": "user", "content": text}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=True,
        )
        ids = pipe.tokenizer(
            [templated], truncation=True, max_length=max_sequence_length, return_tensors="pt"
        ).input_ids.to(device)
        hidden = pipe.text_encoder(input_ids=ids, output_hidden_states=True).hidden_states[-2]
        out.append(hidden[0])
    return out


def encode_prompt(
    pipe: Any, prompt: str, negative_prompt: str | None, cfg: bool, exact_length: bool
) -> tuple[list[Any], list[Any]]:
    """(prompt embeddings, negative embeddings), like ``pipe.encode_prompt``; with
    ``exact_length`` False it is diffusers' own padded encoding."""
    device = pipe.text_encoder.device
    if not exact_length:
        return pipe.encode_prompt(
            prompt=prompt, device=device, do_classifier_free_guidance=cfg,
            negative_prompt=negative_prompt or None,
        )
    positive = encode_prompts_true_length(pipe, [prompt], device)
    negative = encode_prompts_true_length(pipe, [negative_prompt or ""], device) if cfg else []
    return positive, negative
