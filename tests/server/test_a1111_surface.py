"""The AUTOMATIC1111 routes clients call on connect and around a generation, in A1111's
shapes (field names and types as A1111's modules/api/models.py declares them), against a
real server on the tiny model."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from tests.server.conftest import PROMPT, ServerProc

SMALL = {"prompt": PROMPT, "width": 256, "height": 256, "steps": 2, "cfg_scale": 0,
         "seed": 99, "sampler_name": "Euler", "scheduler": "automatic"}


def get(srv: ServerProc, path: str) -> Any:
    r = srv.request("GET", path)
    assert r.status_code == 200, f"{path}: {r.status_code} {r.text}"
    return r.json()


def test_options_name_the_served_model_in_a1111_types(main_server: ServerProc) -> None:
    opts = get(main_server, "/sdapi/v1/options")
    assert opts["sd_model_checkpoint"].startswith("zimage-tiny [")
    assert isinstance(opts["sd_checkpoint_hash"], str) and len(opts["sd_checkpoint_hash"]) == 64
    assert opts["samples_format"] == "png" and opts["CLIP_stop_at_last_layers"] == 1
    models = get(main_server, "/sdapi/v1/sd-models")
    assert len(models) == 1
    model = models[0]
    assert set(model) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    # what webuiapi's util_get_current_model and SillyTavern's model picker rely on
    assert model["title"] == opts["sd_model_checkpoint"]
    assert model["sha256"] == opts["sd_checkpoint_hash"]
    assert model["hash"] == model["sha256"][:10] and model["model_name"] == "zimage-tiny"


def test_set_options_accepts_the_served_model_and_ignores_unknown_keys(
    main_server: ServerProc,
) -> None:
    opts = get(main_server, "/sdapi/v1/options")
    for value in (opts["sd_model_checkpoint"], "zimage-tiny"):
        r = main_server.request("POST", "/sdapi/v1/options", json={
            "sd_model_checkpoint": value, "some_extension_setting": [1, 2],
            "samples_format": "jpg"})
        assert r.status_code == 200, r.text
        assert r.json() is None  # A1111 answers null
    assert get(main_server, "/sdapi/v1/options") == opts  # ignored, as promised
    # Open WebUI posts back the whole options object it read
    r = main_server.request("POST", "/sdapi/v1/options", json=opts)
    assert r.status_code == 200, r.text


def test_set_options_refuses_another_model_clearly(main_server: ServerProc) -> None:
    r = main_server.request("POST", "/sdapi/v1/options",
                            json={"sd_model_checkpoint": "zimage-turbo"})
    assert r.status_code == 409
    err = r.json()["error"]
    assert err["param"] == "sd_model_checkpoint" and "--model zimage-turbo" in err["message"]
    r = main_server.request("POST", "/sdapi/v1/options",
                            json={"sd_model_checkpoint": "sdxl_base.safetensors [31e35c80fc]"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "sd_model_checkpoint"
    assert "zimage-tiny [" in err["message"] and "sdxl_base.safetensors" in err["message"]


def test_lists_have_a1111_shapes(main_server: ServerProc) -> None:
    samplers = get(main_server, "/sdapi/v1/samplers")
    assert [s["name"] for s in samplers] == ["Euler"]
    assert isinstance(samplers[0]["aliases"], list) and isinstance(samplers[0]["options"], dict)
    schedulers = get(main_server, "/sdapi/v1/schedulers")
    assert [(s["name"], s["label"]) for s in schedulers] == [("automatic", "Automatic")]
    assert get(main_server, "/sdapi/v1/sd-vae") == []
    upscalers = get(main_server, "/sdapi/v1/upscalers")
    assert [u["name"] for u in upscalers] == ["None"]
    assert set(upscalers[0]) == {"name", "model_name", "model_path", "model_url", "scale"}
    assert get(main_server, "/sdapi/v1/latent-upscale-modes") == []
    assert get(main_server, "/sdapi/v1/embeddings") == {"loaded": {}, "skipped": {}}
    assert get(main_server, "/sdapi/v1/scripts") == {"txt2img": [], "img2img": []}
    assert get(main_server, "/internal/ping") == {}
    flags = get(main_server, "/sdapi/v1/cmd-flags")
    assert flags["api"] is True and flags["ckpt"] == "zimage-tiny"
    memory = get(main_server, "/sdapi/v1/memory")
    ram = memory["ram"]
    assert 0 < ram["used"] <= ram["total"] and ram["free"] + ram["used"] == ram["total"]
    assert "error" in memory["cuda"]  # no GPU here: said, not invented


@pytest.mark.parametrize("field,value", [
    ("sampler_name", "DPM++ 2M Karras"), ("sampler_name", "Euler a"),
    ("scheduler", "karras"), ("sampler_index", "DDIM"),
])
def test_a_sampler_or_scheduler_it_does_not_run_is_a_clear_400(
    main_server: ServerProc, field: str, value: str
) -> None:
    body = {**SMALL, field: value}
    if field == "sampler_index":
        body["sampler_name"] = None
    r = main_server.request("POST", "/sdapi/v1/txt2img", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field and repr(value) in err["message"]


def test_override_settings_with_another_model_is_refused(main_server: ServerProc) -> None:
    body = {**SMALL, "override_settings": {"sd_model_checkpoint": "zimage-turbo"}}
    r = main_server.request("POST", "/sdapi/v1/txt2img", json=body)
    assert r.status_code == 409
    assert r.json()["error"]["param"] == "override_settings.sd_model_checkpoint"


def test_txt2img_batches_info_and_send_images(main_server: ServerProc) -> None:
    body = {**SMALL, "batch_size": 2, "n_iter": 2, "send_images": False, "save_images": True,
            "alwayson_scripts": {"ADetailer": {"args": [False]}},
            "sampler_name": "k_euler", "override_settings_restore_afterwards": True}
    r = main_server.request("POST", "/sdapi/v1/txt2img", json=body, timeout=300)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["images"] == []  # send_images: false
    info = json.loads(answer["info"])
    assert info["all_seeds"] == [99, 100, 101, 102] and info["batch_size"] == 4
    assert len(info["infotexts"]) == 4
    assert info["infotexts"][1].startswith(PROMPT) and "Seed: 100" in info["infotexts"][1]
    assert info["sampler_name"] == "Euler" and info["index_of_first_image"] == 0
    job = main_server.job(info["steadygen_job"])
    assert job["state"] == "succeeded" and len(job["images"]) == 4


def test_png_info_reads_steadygen_images_back(main_server: ServerProc) -> None:
    r = main_server.request("POST", "/sdapi/v1/txt2img", json={**SMALL, "seed": 1234},
                            timeout=300)
    assert r.status_code == 200, r.text
    png_b64 = r.json()["images"][0]
    r = main_server.request("POST", "/sdapi/v1/png-info",
                            json={"image": "data:image/png;base64," + png_b64})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["info"].startswith(PROMPT) and "Seed: 1234" in out["info"]
    params = out["parameters"]
    assert params["Prompt"] == PROMPT and params["Seed"] == "1234"
    assert (params["Size-1"], params["Size-2"]) == ("256", "256") and params["Steps"] == "2"
    assert json.loads(out["items"]["steadygen"])["parameters"]["seed"] == 1234


def test_png_info_reads_an_a1111_image(main_server: ServerProc) -> None:
    text = ('masterpiece, a red fox\nin the snow\nNegative prompt: blurry, lowres\n'
            'Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 42, '
            'Size: 512x768, Model hash: 31e35c80fc, Model: sd_xl_base_1.0, '
            'Lora hashes: "fox: 1a2b, snow: 3c4d", Version: v1.10.1')
    info = PngInfo()
    info.add_text("parameters", text)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="PNG", pnginfo=info)
    r = main_server.request("POST", "/sdapi/v1/png-info",
                            json={"image": base64.b64encode(buf.getvalue()).decode()})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["info"] == text and out["items"] == {}
    p = out["parameters"]
    assert p["Prompt"] == "masterpiece, a red fox\nin the snow"
    assert p["Negative prompt"] == "blurry, lowres"
    assert p["Sampler"] == "DPM++ 2M" and p["Schedule type"] == "Karras"
    assert p["Lora hashes"] == "fox: 1a2b, snow: 3c4d"
    assert (p["Size-1"], p["Size-2"]) == ("512", "768") and p["Version"] == "v1.10.1"


@pytest.mark.parametrize("image", ["not base64 at all!", base64.b64encode(b"plain text").decode()])
def test_png_info_of_a_non_image_is_a_400(main_server: ServerProc, image: str) -> None:
    r = main_server.request("POST", "/sdapi/v1/png-info", json={"image": image})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "image"
