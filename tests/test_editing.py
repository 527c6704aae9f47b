"""The edit fields of GenerationRequest: validation (each broken rule names its field, the
rule and the value), the JSON round trip, the baseline variant and ``<lora:name:w>``."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from steadygen.config import Limits
from steadygen.editing import LoraSpec, available_loras, lora_fields, split_lora_tags
from steadygen.errors import InvalidRequest
from steadygen.inputs import store_image, store_mask
from steadygen.request import GenerationRequest, validate_request


@pytest.fixture
def limits(tmp_path: Path) -> Limits:
    loras = tmp_path / "loras"
    loras.mkdir()
    for name in ("style", "my char"):
        (loras / f"{name}.safetensors").write_bytes(b"x")
    (loras / "notes.txt").write_text("not an adapter")
    return dataclasses.replace(Limits(), lora_dir=loras, inputs_dir=tmp_path / "inputs")


@pytest.fixture
def refs(limits: Limits) -> dict[str, str]:
    def png(image: Image.Image) -> bytes:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()

    assert limits.inputs_dir is not None
    mask = Image.new("L", (256, 256), 0)
    mask.paste(255, (10, 10, 20, 20))
    return {
        "image": store_image(png(Image.new("RGB", (256, 256))), "i", limits,
                             limits.inputs_dir).ref,
        "mask": store_mask(png(mask), "m", limits, limits.inputs_dir, None).ref,
        "small_mask": store_mask(png(mask.resize((128, 128))), "m", limits,
                                 limits.inputs_dir, None).ref,
    }


def check(limits: Limits, **raw: Any) -> GenerationRequest:
    base = {"prompt": "a cat", "width": 256, "height": 256, "seed": 1}
    return validate_request({**base, **raw}, limits=limits, models=["m"], default_model="m")


def errors(limits: Limits, **raw: Any) -> dict[str, str]:
    with pytest.raises(InvalidRequest) as exc:
        check(limits, **raw)
    return {e.field: e.message for e in exc.value.errors}


def test_mode_follows_the_inputs(limits: Limits, refs: dict[str, str]) -> None:
    assert check(limits).mode == "txt2img" and check(limits).variant == ""
    i2i = check(limits, init_image=refs["image"], strength=0.3)
    assert (i2i.mode, i2i.steps_run, i2i.variant) == ("img2img", 3, "img2img:3")
    inpaint = check(limits, init_image=refs["image"], mask=refs["mask"])
    assert (inpaint.mode, inpaint.strength, inpaint.steps_run) == ("inpaint", 1.0, 8)


def test_round_trip_through_json(limits: Limits, refs: dict[str, str]) -> None:
    req = check(limits, init_image=refs["image"], mask=refs["mask"], strength=0.5,
                loras=[{"name": "style", "weight": 0.8}, {"name": "my char"}], mask_blur=4,
                mask_invert=True, inpaint_fill="fill", inpaint_full_res=True,
                resize_mode="crop")
    again = GenerationRequest.from_dict(json.loads(json.dumps(req.to_dict())))
    assert again == req
    assert again.loras == (LoraSpec("style", 0.8), LoraSpec("my char", 1.0))
    assert again.variant == "inpaint:4,lora=my char+style"


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        ({"strength": 1.5, "img": True}, "strength", "from 0 to 1 (got 1.5)"),
        ({"strength": -0.1, "img": True}, "strength", "got -0.1"),
        ({"strength": 0, "img": True}, "strength", "above 0"),
        ({"strength": 0.5}, "strength", "img2img and inpaint only"),
        ({"mode": "img2img"}, "init_image", "required for img2img"),
        ({"mode": "outpaint"}, "mode", "got 'outpaint'"),
        ({"loras": [{"name": "../../etc/passwd"}]}, "loras[0].name", "without folder"),
        ({"loras": [{"name": "nope"}]}, "loras[0].name", "offered: my char, style"),
        ({"loras": [{"name": "style", "weight": 5}]}, "loras[0].weight", "from -2 to 2"),
        ({"loras": [{"name": "style"}] * 5}, "loras", "at most 4 adapters (got 5)"),
        ({"loras": [{"name": "style"}, {"name": "style"}]}, "loras", "more than once"),
        ({"control_image": "IMG"}, "control_image", "none is configured"),
        ({"mask_blur": 100, "img": True}, "mask_blur", "from 0 to 64"),
        ({"resize_mode": "zoom", "img": True}, "resize_mode", "resize, crop, fill"),
        ({"init_image": "0" * 64}, "init_image", "no stored input"),
        ({"init_image": "../x.png"}, "init_image", "64 hex digits"),
    ],
)
def test_bad_edit_fields_name_the_field(
    limits: Limits, refs: dict[str, str], raw: dict[str, Any], field: str, words: str
) -> None:
    raw = dict(raw)
    if raw.pop("img", False):
        raw["init_image"] = refs["image"]
    if raw.get("control_image") == "IMG":
        raw["control_image"] = refs["image"]
    found = errors(limits, **raw)
    assert field in found and words in found[field], found


def test_mask_size_must_match_the_image(limits: Limits, refs: dict[str, str]) -> None:
    found = errors(limits, init_image=refs["image"], mask=refs["small_mask"])
    assert "same size as init_image, 256x256 (got 128x128)" in found["mask"]


def test_without_a_lora_dir_a_lora_is_refused(refs: dict[str, str], limits: Limits) -> None:
    bare = dataclasses.replace(limits, lora_dir=None)
    assert "no lora_dir is configured" in errors(bare, loras=[{"name": "style"}])[
        "loras[0].name"]


def test_control_image_with_a_controlnet(limits: Limits, refs: dict[str, str]) -> None:
    with_cn = dataclasses.replace(limits, controlnet_enabled=True)
    req = check(with_cn, control_image=refs["image"], control_scale=0.5)
    assert req.variant == "control" and req.control_scale == 0.5
    found = errors(with_cn, init_image=refs["image"], control_image=refs["image"])
    assert "not img2img" in found["control_image"]


def test_lora_tags_in_a_prompt() -> None:
    clean, loras = split_lora_tags("a <lora:style:0.7> cat, <LORA:my char> sitting")
    assert clean == "a cat, sitting"
    assert loras == [{"name": "style", "weight": "0.7"}, {"name": "my char", "weight": 1.0}]
    assert lora_fields("no tags here") == {}
    assert lora_fields("<lora:x:abc> dog") == {"prompt": "dog",
                                               "loras": [{"name": "x", "weight": "abc"}]}


def test_lora_weight_text_from_a_tag_is_checked(limits: Limits) -> None:
    found = errors(limits, **lora_fields("<lora:style:lots> a cat"))
    assert "got 'lots'" in found["loras[0].weight"]
    assert check(limits, **lora_fields("<lora:style:0.5> a cat")).loras == (
        LoraSpec("style", 0.5),)


def test_available_loras_lists_safetensors_only(limits: Limits) -> None:
    assert available_loras(limits.lora_dir) == ["my char", "style"]
    assert available_loras(None) == []
