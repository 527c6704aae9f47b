"""Editing through every API of a real server on the tiny model with the tiny LoRAs and
ControlNet: the official ``openai`` client's ``images.edit`` with a mask, ``webuiapi``'s
``img2img`` with a mask and a LoRA in the prompt, the native job API with uploads, and every
kind of bad input answered 4xx naming the field."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import webuiapi
from PIL import Image

from steadygen.engine.tiny_adapters import ensure_tiny_adapters
from tests.server.conftest import API_KEY, LONG_JOB, ServerProc

SIDE = 256
UPLOAD_LIMIT = 3_000_000


@pytest.fixture(scope="module")
def edit_server(server_factory: Callable[..., ServerProc], cache_dir: Any) -> ServerProc:
    adapters = ensure_tiny_adapters(cache_dir)
    env = {"STEADYGEN_LORA_DIR": str(adapters.lora_dir),
           "STEADYGEN_CONTROLNET": str(adapters.controlnet_dir),
           "STEADYGEN_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
           "STEADYGEN_WARMUP_SIZES": f"{SIDE}x{SIDE}"}
    return server_factory(env=env, api_key=API_KEY, concurrency=1)


@pytest.fixture
def edits(edit_server: ServerProc) -> Iterator[ServerProc]:
    if not edit_server.alive():
        edit_server.start()
    yield edit_server


def picture(seed: int = 0, size: tuple[int, int] = (SIDE, SIDE)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hole_mask(alpha: bool) -> Image.Image:
    """A centred square to redo: transparent (OpenAI) or white (A1111)."""
    if alpha:
        mask = Image.new("RGBA", (SIDE, SIDE), (0, 0, 0, 255))
        mask.paste((0, 0, 0, 0), (64, 64, 192, 192))
        return mask
    mask = Image.new("L", (SIDE, SIDE), 0)
    mask.paste(255, (64, 64, 192, 192))
    return mask


def kept_outside(out: Image.Image, source: Image.Image) -> bool:
    a, b = np.asarray(out.convert("RGB")), np.asarray(source)
    inside = np.zeros((SIDE, SIDE), bool)
    inside[64:192, 64:192] = True
    return bool((a[~inside] == b[~inside]).all() and (a[inside] != b[inside]).any())


def test_openai_client_images_edit_with_a_mask(edits: ServerProc) -> None:
    source = picture(1)
    with openai.OpenAI(base_url=edits.base_url + "/v1", api_key=API_KEY, max_retries=0,
                       timeout=300) as client:
        result = client.images.edit(
            image=("cat.png", png(source), "image/png"),
            mask=("mask.png", png(hole_mask(alpha=True)), "image/png"),
            prompt="a red hat", n=1, size=f"{SIDE}x{SIDE}", response_format="b64_json",
            extra_body={"steps": 2, "seed": 3},
        )
    assert result.data and len(result.data) == 1
    out = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json or "")))
    assert out.size == (SIDE, SIDE) and kept_outside(out, source)


def test_openai_edit_without_mask_is_img2img_and_takes_the_image_size(
    edits: ServerProc
) -> None:
    files = [("image", ("a.png", png(picture(2, (327, 290))), "image/png"))]
    r = edits.request("POST", "/v1/images/edits", files=files,
                      data={"prompt": "a boat", "steps": "4", "response_format": "url"},
                      timeout=300)
    assert r.status_code == 200, r.text
    url = r.json()["data"][0]["url"]
    job_id = url.split("/v1/jobs/")[1].split("/")[0]
    job = edits.job(job_id)
    assert job["request"]["mode"] == "img2img" and job["request"]["strength"] == 0.75
    assert (job["request"]["width"], job["request"]["height"]) == (320, 288)
    image = edits.request("GET", url.replace(edits.base_url, ""))
    assert Image.open(io.BytesIO(image.content)).size == (320, 288)


def test_webuiapi_img2img_with_a_mask_and_a_lora_in_the_prompt(edits: ServerProc) -> None:
    host, port = edits.base_url.removeprefix("http://").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port))
    api.session.headers["Authorization"] = f"Bearer {API_KEY}"
    source = picture(4)
    result = api.img2img(images=[source], mask_image=hole_mask(alpha=False),
                         prompt="a castle <lora:tiny-style:0.8>", width=SIDE, height=SIDE,
                         steps=4, denoising_strength=1.0, seed=5, inpaint_full_res=False,
                         mask_blur=0)
    assert len(result.images) == 1 and kept_outside(result.image, source)
    info = result.info
    assert info["prompt"] == "a castle" and info["loras"] == [
        {"name": "tiny-style", "weight": 0.8}]
    job = edits.job(info["steadygen_jobs"][0])
    assert job["request"]["mode"] == "inpaint"
    assert job["request"]["loras"] == [{"name": "tiny-style", "weight": 0.8}]
    first = job["timings"]["adapter_s"]
    # The first job with a new LoRA is explained: the adapter switch is a cause.
    causes = {c["kind"]: c for c in job["diagnosis"]["causes"]}
    assert "adapter_switch" in causes, job["diagnosis"]
    assert causes["adapter_switch"]["seconds"] == pytest.approx(first, rel=0.05, abs=0.002)
    again = api.img2img(images=[source], mask_image=hole_mask(alpha=False),
                        prompt="a castle <lora:tiny-style:0.8>", width=SIDE, height=SIDE,
                        steps=2, seed=5, inpaint_full_res=False)
    second = edits.job(again.info["steadygen_jobs"][0])["timings"]["adapter_s"]
    assert first > 0 and second == 0  # the switch is paid once, then cached


def test_lora_syntax_on_txt2img(edits: ServerProc) -> None:
    body = {"prompt": "<lora:tiny-character:1.2> a dog", "width": SIDE, "height": SIDE,
            "steps": 2, "seed": 1}
    r = edits.request("POST", "/sdapi/v1/txt2img", json=body, timeout=300)
    assert r.status_code == 200, r.text
    job = edits.job(json.loads(r.json()["info"])["steadygen_job"])
    assert job["request"]["prompt"] == "a dog"
    assert job["request"]["loras"] == [{"name": "tiny-character", "weight": 1.2}]


def test_lora_lists(edits: ServerProc) -> None:
    native = edits.request("GET", "/v1/loras").json()
    assert [x["name"] for x in native["loras"]] == ["tiny-character", "tiny-style"]
    assert native["controlnet"] is True
    a1111 = edits.request("GET", "/sdapi/v1/loras").json()
    assert [x["name"] for x in a1111] == ["tiny-character", "tiny-style"]
    limits = httpx.get(edits.base_url + "/readyz").json()["limits"]  # no key needed there
    assert limits["max_loras"] == 4 and limits["controlnet_enabled"] is True
    assert "lora_dir" not in limits and "inputs_dir" not in limits  # no server paths


def test_native_upload_then_job_with_sse_and_control(edits: ServerProc) -> None:
    up = edits.request("POST", "/v1/inputs", files={"file": ("x.png", png(picture(6)))})
    assert up.status_code == 201, up.text
    ref = up.json()["id"]
    assert up.json()["width"] == SIDE
    job = edits.submit(prompt="a tree", init_image=ref, strength=0.5, steps=4,
                       width=SIDE, height=SIDE, loras=[{"name": "tiny-style"}])
    events = edits.events(job["id"], until=lambda e: e.event in ("succeeded", "failed"))
    steps = [e.data for e in events if e.event == "step"]
    assert events[-1].event == "succeeded", events[-1]
    assert [s["steps"] for s in steps] == [2, 2]  # strength 0.5 of 4 steps runs 2
    control = edits.submit(prompt="a tree", control_image=b64(png(picture(7))),
                           control_scale=0.5, steps=2, width=SIDE, height=SIDE)
    done = edits.wait_done(control["id"])
    assert done["state"] == "succeeded" and done["request"]["control_image"]


def test_an_accepted_edit_survives_kill_9(edits: ServerProc) -> None:
    blocker = edits.submit(**LONG_JOB)
    edits.wait_running(blocker["id"])
    mask = b64(png(hole_mask(alpha=False)))
    job = edits.submit(prompt="a lamp", init_image=b64(png(picture(8))), mask=mask,
                       steps=2, width=SIDE, height=SIDE)
    edits.kill()
    edits.start()
    done = edits.wait_done(job["id"])
    assert done["state"] == "succeeded", done
    assert done["request"]["mode"] == "inpaint"


def png16() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    rows = b"".join(b"\x00" + b"\x12\x34" * 3 * 8 for _ in range(8))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def bomb() -> bytes:
    data = bytearray(png16())
    data[16:24] = struct.pack(">II", 50_000, 50_000)  # declared size only; CRC now wrong
    return bytes(data)


def animated() -> bytes:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:])
    return buf.getvalue()


GOOD = png(picture(9))
BAD_IMAGES = {
    "bytes": b"hello, not an image",
    "truncated": GOOD[: len(GOOD) // 2],
    "bomb": bomb(),
    "animated": animated(),
    "16-bit": png16(),
}


@pytest.mark.parametrize("kind", list(BAD_IMAGES))
def test_bad_images_are_400_naming_the_field_on_every_api(
    edits: ServerProc, kind: str
) -> None:
    data = BAD_IMAGES[kind]
    r = edits.request("POST", "/v1/images/edits", files={"image": ("x.png", data)},
                      data={"prompt": "p"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "image", r.text
    r = edits.request("POST", "/sdapi/v1/img2img", json={"init_images": [b64(data)]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "init_images[0]", r.text
    r = edits.request("POST", "/v1/jobs", json={"prompt": "p", "init_image": b64(data)})
    assert r.status_code == 400 and r.json()["error"]["param"] == "init_image", r.text


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"mask": "SMALL_MASK"}, "mask", "same size"),
        ({"mask": "EMPTY_MASK"}, "mask", "no region"),
        ({"strength": 1.5}, "strength", "from 0 to 1"),
        ({"loras": [{"name": "nope"}]}, "loras[0].name", "offered: tiny-character"),
        ({"loras": [{"name": "../../secret"}]}, "loras[0].name", "without folder"),
        ({"loras": [{"name": "tiny-style", "weight": 9}]}, "loras[0].weight", "from -2 to 2"),
    ],
)
def test_bad_edit_fields_are_400_naming_the_field(
    edits: ServerProc, body: dict[str, Any], field: str, words: str
) -> None:
    masks = {"SMALL_MASK": hole_mask(False).resize((128, 128)),
             "EMPTY_MASK": Image.new("L", (SIDE, SIDE), 0)}
    if body.get("mask") in masks:
        body = {**body, "mask": b64(png(masks[body["mask"]]))}
    r = edits.request("POST", "/v1/jobs", json={"prompt": "p", "init_image": b64(GOOD),
                                                "width": SIDE, "height": SIDE, **body})
    assert r.status_code == 400, r.text
    errors = {e["field"]: e["message"] for e in r.json()["error"]["errors"]}
    assert field in errors and words in errors[field], errors


def test_too_many_images_and_an_oversized_upload(edits: ServerProc) -> None:
    files = [("image[]", (f"{k}.png", GOOD)) for k in range(5)]
    r = edits.request("POST", "/v1/images/edits", files=files, data={"prompt": "p"})
    assert r.status_code == 400 and "at most 4 images (got 5)" in r.text
    big = b64(b"x" * UPLOAD_LIMIT)
    r = edits.request("POST", "/sdapi/v1/img2img", json={"init_images": [big]})
    assert r.status_code == 413 and r.json()["error"]["param"] == "body"


def test_a_control_image_without_a_controlnet_is_400(plain: ServerProc) -> None:
    r = plain.request("POST", "/v1/jobs", json={"prompt": "p", "control_image": b64(GOOD)})
    assert r.status_code == 400, r.text
    assert "none is configured" in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "control_image"
