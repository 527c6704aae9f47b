"""GenerationRequest validation: every broken rule names its field, the allowed range and the
value received, and nothing is clamped silently."""

from __future__ import annotations

import math
from typing import Any

import pytest

from steadygen.config import Limits
from steadygen.errors import InvalidRequest
from steadygen.request import (
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    SEED_MAX,
    GenerationRequest,
    parse_size,
    validate_request,
)

LIMITS = Limits()
MODELS = ["zimage-tiny", "zimage-turbo"]


def check(raw: dict[str, Any], limits: Limits = LIMITS) -> GenerationRequest:
    return validate_request(raw, limits=limits, models=MODELS, default_model="zimage-tiny")


def base(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"prompt": "a lighthouse at dusk", "width": 256, "height": 256}
    raw.update(overrides)
    return raw


def errors_of(raw: dict[str, Any], limits: Limits = LIMITS) -> dict[str, str]:
    with pytest.raises(InvalidRequest) as info:
        check(raw, limits)
    return {e.field: e.message for e in info.value.errors}


# (overrides, field, substrings the message must hold: the allowed range and the value)
BAD = [
    pytest.param({"width": 250}, "width", ["multiple of 16", "256", "2048", "250"], id="w-250"),
    pytest.param({"height": 1000}, "height", ["multiple of 16", "1000", "992"], id="h-1000"),
    pytest.param({"width": 240}, "width", ["256", "2048", "240"], id="w-too-small"),
    pytest.param({"height": 4096}, "height", ["256", "2048", "4096"], id="h-too-big"),
    pytest.param({"steps": 0}, "steps", ["1", "100", "0"], id="steps-0"),
    pytest.param({"steps": 101}, "steps", ["1", "100", "101"], id="steps-101"),
    pytest.param({"steps": 8.5}, "steps", ["whole number", "1", "100", "8.5"], id="steps-8.5"),
    pytest.param({"guidance": math.nan}, "guidance", ["finite", "0", "30", "nan"], id="g-nan"),
    pytest.param({"guidance": math.inf}, "guidance", ["finite", "0", "30", "inf"], id="g-inf"),
    pytest.param({"guidance": -math.inf}, "guidance", ["finite", "0", "30"], id="g-neg-inf"),
    pytest.param({"guidance": -1.0}, "guidance", ["0", "30", "-1"], id="g-negative"),
    pytest.param({"guidance": 31}, "guidance", ["0", "30", "31"], id="g-too-big"),
    pytest.param({"n": 0}, "n", ["1", "4", "0"], id="n-0"),
    pytest.param({"n": 5}, "n", ["1", "4", "5"], id="n-5"),
    pytest.param({"prompt": ""}, "prompt", ["empty"], id="prompt-empty"),
    pytest.param({"prompt": "  \n "}, "prompt", ["empty"], id="prompt-blank"),
    pytest.param({"prompt": "x" * 4001}, "prompt", ["4000", "4001"], id="prompt-long"),
    pytest.param(
        {"negative_prompt": "x" * 4001}, "negative_prompt", ["4000", "4001"], id="neg-long"
    ),
    pytest.param({"prompt": "a\x00b"}, "prompt", ["NUL"], id="prompt-nul"),
    pytest.param({"seed": -1}, "seed", ["0", "4294967295", "-1"], id="seed--1"),
    pytest.param({"seed": 2**32}, "seed", ["0", "4294967295", "4294967296"], id="seed-2^32"),
    pytest.param({"model": "nope"}, "model", ["zimage-tiny", "zimage-turbo", "nope"], id="model"),
    pytest.param({"steps": "abc"}, "steps", ["whole number", "1", "100", "abc"], id="steps-abc"),
    pytest.param({"steps": True}, "steps", ["whole number", "1", "100", "True"], id="steps-True"),
    pytest.param({"n": "abc"}, "n", ["1", "4", "abc"], id="n-abc"),
    pytest.param({"n": True}, "n", ["1", "4", "True"], id="n-True"),
    pytest.param({"seed": "abc"}, "seed", ["0", "4294967295", "abc"], id="seed-abc"),
    pytest.param({"seed": True}, "seed", ["0", "4294967295", "True"], id="seed-True"),
    pytest.param({"guidance": "abc"}, "guidance", ["0", "30", "abc"], id="g-abc"),
    pytest.param({"guidance": True}, "guidance", ["0", "30", "True"], id="g-True"),
    pytest.param({"guidance": [1]}, "guidance", ["0", "30"], id="g-list"),
    pytest.param({"width": "abc"}, "width", ["multiple of 16", "256", "2048", "abc"], id="w-abc"),
    pytest.param({"height": True}, "height", ["256", "2048", "True"], id="h-True"),
    pytest.param({"prompt": 5}, "prompt", ["text", "int"], id="prompt-int"),
]


@pytest.mark.parametrize(("overrides", "field", "needles"), BAD)
def test_each_broken_rule_names_field_range_and_value(
    overrides: dict[str, Any], field: str, needles: list[str]
) -> None:
    errors = errors_of(base(**overrides))
    assert list(errors) == [field], errors
    for needle in needles:
        assert needle in errors[field], (needle, errors[field])


def test_empty_prompt_message_gives_the_allowed_length() -> None:
    message = errors_of(base(prompt=""))["prompt"]
    assert "4000" in message, message


def test_pixel_cap_names_size_and_the_cap() -> None:
    limits = Limits(max_pixels=1024 * 1024)
    errors = errors_of(base(width=1024, height=1040), limits)
    assert list(errors) == ["size"]
    assert str(1024 * 1024) in errors["size"] and "1024x1040" in errors["size"]
    check(base(width=1024, height=1024), limits)  # exactly at the cap is fine


def test_every_broken_rule_is_reported_not_just_the_first() -> None:
    errors = errors_of({"prompt": "", "width": 250, "steps": 0, "n": 9, "seed": -5})
    assert set(errors) == {"prompt", "width", "steps", "n", "seed"}


def test_invalid_request_message_and_first() -> None:
    with pytest.raises(InvalidRequest) as info:
        check(base(steps=0, n=9))
    assert info.value.first.field == "steps"
    assert "steps:" in str(info.value) and "n:" in str(info.value)


def test_defaults_are_turbo_settings() -> None:
    req = check({"prompt": "p"})
    assert (req.width, req.height) == (1024, 1024)
    assert req.steps == DEFAULT_STEPS == 8
    assert req.guidance == DEFAULT_GUIDANCE == 0.0
    assert req.n == 1 and req.model == "zimage-tiny" and req.negative_prompt == ""
    assert not req.uses_cfg


def test_bounds_are_inclusive() -> None:
    low = check(base(width=256, height=2048, steps=1, n=1, seed=0, guidance=0.0))
    high = check(base(width=2048, height=256, steps=100, n=4, seed=SEED_MAX, guidance=30))
    assert (low.seed, high.seed) == (0, 2**32 - 1)
    assert (low.steps, high.steps, high.n) == (1, 100, 4)


def test_numbers_given_as_text_or_whole_floats_are_accepted() -> None:
    req = check(base(width="512", height=512.0, steps="4", n="2", seed="7", guidance="3.5"))
    assert (req.width, req.height, req.steps, req.n, req.seed) == (512, 512, 4, 2, 7)
    assert req.guidance == 3.5 and req.uses_cfg
    assert isinstance(req.width, int) and isinstance(req.height, int)


def test_given_seed_is_kept_and_not_random() -> None:
    req = check(base(seed=123))
    assert req.seed == 123 and req.seed_was_random is False


def test_missing_seed_is_random_and_recorded() -> None:
    seeds = {check(base()).seed for _ in range(8)}
    req = check(base(seed=None))
    assert req.seed_was_random is True and 0 <= req.seed <= SEED_MAX
    assert len(seeds) > 1  # 8 draws from 2**32 values: a repeat means it is not random


def test_no_model_means_the_default() -> None:
    assert check(base(model=None)).model == "zimage-tiny"
    assert check(base(model="zimage-turbo")).model == "zimage-turbo"


def test_round_trip_through_dict() -> None:
    req = check(base(seed=5, negative_prompt="blurry", guidance=2))
    again = GenerationRequest.from_dict({**req.to_dict(), "unknown_key": 1})
    assert again == req
    assert req.size == "256x256"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1024x768", (1024, 768)), ("512X512", (512, 512)), ("256×320", (256, 320))],
)
def test_parse_size(text: str, expected: tuple[int, int]) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["1024", "axb", "1024x", "-256x256", "", None, 1024])
def test_parse_size_rejects_with_the_expected_form(text: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_size(text, field="--size")
    assert info.value.first.field == "--size"
    assert "WIDTHxHEIGHT" in info.value.first.message


def test_image_seeds_count_up_from_the_seed_and_wrap_past_the_maximum() -> None:
    from steadygen.request import SEED_MAX, GenerationRequest

    req = GenerationRequest(prompt="p", width=256, height=256, steps=2, guidance=0.0,
                            seed=SEED_MAX - 1, n=3, model="m")
    assert req.image_seeds == [SEED_MAX - 1, SEED_MAX, 0]
