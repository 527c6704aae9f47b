"""The official ``openai`` Python client, unchanged, against POST /v1/images/generations."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import openai
import pytest
from PIL import Image

from tests.server.conftest import PROMPT, ServerProc


@pytest.fixture
def client(main_server: ServerProc) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=main_server.base_url + "/v1",
        api_key=main_server.api_key,
        max_retries=0,
        timeout=300,
    ) as c:
        yield c


def _png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


def test_b64_json_with_size_n_and_extension_fields(client: openai.OpenAI) -> None:
    result = client.images.generate(
        prompt=PROMPT,
        size="256x256",
        n=2,
        response_format="b64_json",
        extra_body={"seed": 1234, "steps": 2},
    )
    assert result.created > 0
    assert result.data is not None and len(result.data) == 2
    images = [_png(base64.b64decode(d.b64_json or "")) for d in result.data]
    assert all(im.size == (256, 256) for im in images)
    assert images[0].tobytes() != images[1].tobytes()  # seed and seed + 1
    assert result.data[0].revised_prompt == PROMPT


def test_same_seed_through_the_client_gives_the_same_image(client: openai.OpenAI) -> None:
    def one() -> bytes:
        r = client.images.generate(
            prompt=PROMPT,
            size="256x256",
            response_format="b64_json",
            extra_body={"seed": 99, "steps": 2},
        )
        assert r.data is not None
        return _png(base64.b64decode(r.data[0].b64_json or "")).tobytes()

    assert one() == one()


def test_url_response_can_be_fetched(client: openai.OpenAI, main_server: ServerProc) -> None:
    result = client.images.generate(
        prompt=PROMPT,
        size="256x320",
        response_format="url",
        extra_body={"seed": 5, "steps": 2},
    )
    assert result.data is not None and len(result.data) == 1
    url = result.data[0].url or ""
    assert url.startswith(main_server.base_url + "/v1/jobs/") and url.endswith("/images/0.png")
    fetched = main_server.request("GET", url[len(main_server.base_url) :])
    assert fetched.status_code == 200
    assert _png(fetched.content).size == (256, 320)


def test_a_bad_size_raises_bad_request_naming_the_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt=PROMPT, size="250x256")
    err = caught.value
    assert err.status_code == 400
    assert "width" in err.message and "250" in err.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt=PROMPT, size="huge")
    assert "size" in caught.value.message
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "size"


def test_a_bad_n_and_an_unknown_model_raise_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt=PROMPT, size="256x256", n=9)
    assert caught.value.body["param"] == "n"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt=PROMPT, size="256x256", model="dall-e-3")
    assert "model" in caught.value.message


def test_a_wrong_key_raises_authentication_error(main_server: ServerProc) -> None:
    with (
        openai.OpenAI(base_url=main_server.base_url + "/v1", api_key="wrong", max_retries=0) as c,
        pytest.raises(openai.AuthenticationError) as caught,
    ):
        c.images.generate(prompt=PROMPT, size="256x256")
    assert caught.value.status_code == 401
