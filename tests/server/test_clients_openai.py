"""The official ``openai`` client, unchanged: models, output formats and compression, url
files, and image streaming with partial images (``image_generation.partial_image`` events
from the live previews, then ``image_generation.completed``)."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from PIL import Image

from tests.server.conftest import PROMPT, ServerProc


@pytest.fixture
def client(main_server: ServerProc) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=main_server.base_url + "/v1", api_key=main_server.api_key,
                       max_retries=0, timeout=300) as c:
        yield c


def _image(b64: str, fmt: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == fmt
    return image


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    models = list(client.models.list())
    assert [m.id for m in models] == ["zimage-tiny"]
    assert models[0].object == "model" and models[0].owned_by == "steadygen"
    assert client.models.retrieve("zimage-tiny").id == "zimage-tiny"
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("dall-e-3")
    assert "zimage-tiny" in str(err.value)


@pytest.mark.parametrize("fmt,pil", [("jpeg", "JPEG"), ("webp", "WEBP"), ("png", "PNG")])
def test_output_format_and_compression(client: openai.OpenAI, fmt: str, pil: str) -> None:
    sizes, pixels = [], []
    for compression in (10, 95):
        result = client.images.generate(
            prompt=PROMPT, size="256x256", output_format=fmt,  # type: ignore[arg-type]
            output_compression=compression, extra_body={"seed": 8, "steps": 2})
        assert result.data is not None
        image = _image(result.data[0].b64_json or "", pil)
        assert image.size == (256, 256)
        sizes.append(len(result.data[0].b64_json or ""))
        pixels.append(image.convert("RGB").tobytes())
    if fmt == "png":
        assert pixels[0] == pixels[1]  # lossless: compression does not apply
    else:
        assert sizes[0] < sizes[1]  # quality 10 is smaller than quality 95


def test_url_in_another_format_is_served(client: openai.OpenAI, main_server: ServerProc) -> None:
    result = client.images.generate(prompt=PROMPT, size="256x256", response_format="url",
                                    output_format="webp", extra_body={"seed": 9, "steps": 2})
    assert result.data is not None
    url = result.data[0].url or ""
    assert "/v1/images/files/" in url and url.endswith("/0.webp")
    fetched = main_server.request("GET", url[len(main_server.base_url):])
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(fetched.content)).size == (256, 256)
    missing = main_server.request("GET", url[len(main_server.base_url):].replace("/0.", "/5."))
    assert missing.status_code == 404


def _stream(client: openai.OpenAI, **kw: Any) -> list[Any]:
    stream = client.images.generate(prompt=PROMPT, size="256x256", stream=True, **kw)
    return list(stream)


def test_stream_without_partials_sends_each_image_completed(client: openai.OpenAI) -> None:
    events = _stream(client, n=2, partial_images=0, extra_body={"seed": 21, "steps": 2})
    assert [e.type for e in events] == ["image_generation.completed"] * 2
    for e in events:
        assert e.size == "256x256" and e.output_format == "png"
        assert _image(e.b64_json, "PNG").size == (256, 256)


def test_stream_with_partial_images_sends_previews_then_the_image(
    client: openai.OpenAI,
) -> None:
    # 512x512: tiny-model steps long enough that the 2 % preview budget allows most steps
    stream = client.images.generate(prompt=PROMPT, size="512x512", stream=True,
                                    partial_images=2, output_format="jpeg",
                                    extra_body={"seed": 22, "steps": 8})
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    partials = events[:2]
    assert [p.partial_image_index for p in partials] == [0, 1]
    for p in partials:
        assert _image(p.b64_json, "JPEG").size == (128, 128)  # the latents' preview
        assert p.size == "512x512" and p.output_format == "jpeg"
    assert partials[0].b64_json != partials[1].b64_json  # the picture forms
    assert _image(events[-1].b64_json, "JPEG").size == (512, 512)


def test_stream_of_an_invalid_request_is_a_plain_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        _stream(client, partial_images=1, extra_body={"steps": 0})
    assert "steps" in str(err.value)
