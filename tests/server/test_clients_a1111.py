"""Real AUTOMATIC1111 clients against a real server (no API key, like a default A1111):
the ``webuiapi`` package, unchanged, and request-by-request replays of what two popular
front ends send when they connect to an A1111 server and generate.

The replays follow the front ends' public source:

- SillyTavern (github.com/SillyTavern/SillyTavern), ``src/endpoints/stable-diffusion.js``:
  its server proxies the page's calls to A1111 as ``/ping`` -> GET /sdapi/v1/options;
  ``/upscalers`` -> GET /sdapi/v1/upscalers and GET /sdapi/v1/latent-upscale-modes (names
  spliced after the first); ``/vaes`` -> GET /sdapi/v1/sd-vae and GET /sdapi/v1/sd-modules
  (Forge; the first that answers a list wins); ``/samplers`` and ``/schedulers`` -> their
  names; ``/models`` -> sd-models' titles; ``/get-model`` -> options' sd_model_checkpoint;
  ``/set-model`` -> POST /sdapi/v1/options {sd_model_checkpoint}, then GET /sdapi/v1/progress
  until progress is 0.0 and state.job_count is 0; ``/generate`` -> GET /sdapi/v1/options
  (Forge check: 'forge_preset' in it), then POST /sdapi/v1/txt2img with the page's whole
  body (``public/scripts/extensions/stable-diffusion/index.js``, generateAutoImage: the
  connection's url and auth, hires fields, override_settings with CLIP_stop_at_last_layers
  and sd_vae, save_images and send_images true), and POST /sdapi/v1/interrupt when the user
  aborts.
- Open WebUI (github.com/open-webui/open-webui), ``backend/open_webui/routers/images.py``:
  verify_url -> GET /sdapi/v1/options (an empty ``authorization`` header without A1111 auth);
  get_models -> GET /sdapi/v1/sd-models as {id: title, name: model_name}; set_image_model
  -> GET /sdapi/v1/options, and when the chosen title differs, POST of the whole options
  object with sd_model_checkpoint replaced; image_generations -> POST /sdapi/v1/txt2img with
  prompt, batch_size, width, height, steps, negative_prompt, cfg_scale, sampler_name and
  scheduler, reading ``images`` and keeping ``info``.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.server.conftest import JOB_TIMEOUT_S, LONG_JOB, PROMPT, TERMINAL, ServerProc

webuiapi = pytest.importorskip("webuiapi")


def _png(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "PNG"
    return image


def test_webuiapi_models_options_and_txt2img(plain: ServerProc) -> None:
    api = webuiapi.WebUIApi(host="127.0.0.1", port=plain.port, sampler="Euler",
                            scheduler="automatic", steps=2)
    models = api.get_sd_models()
    assert [m["model_name"] for m in models] == ["zimage-tiny"]
    options = api.get_options()
    assert options["sd_model_checkpoint"] == models[0]["title"]
    assert api.set_options({"sd_model_checkpoint": models[0]["title"]}) is None
    assert api.util_get_current_model() == models[0]["title"]
    assert [s["name"] for s in api.get_samplers()] == ["Euler"]
    result = api.txt2img(prompt=PROMPT, width=256, height=256, cfg_scale=0, seed=17,
                         batch_size=2)
    assert [im.size for im in result.images] == [(256, 256), (256, 256)]
    assert result.info["all_seeds"] == [17, 18] and len(result.info["infotexts"]) == 2
    assert result.parameters["prompt"] == PROMPT
    back = api.png_info(result.images[0])
    assert back.info.startswith(PROMPT) and "Seed: 17" in back.info


def test_webuiapi_default_sampler_is_refused_by_name(plain: ServerProc) -> None:
    api = webuiapi.WebUIApi(host="127.0.0.1", port=plain.port, steps=2)  # 'Euler a'
    with pytest.raises(RuntimeError) as err:
        api.txt2img(prompt=PROMPT, width=256, height=256, cfg_scale=0)
    status, text = err.value.args
    assert status == 400 and "sampler_name" in text and "Euler a" in text


def test_webuiapi_progress_then_interrupt(plain: ServerProc) -> None:
    api = webuiapi.WebUIApi(host="127.0.0.1", port=plain.port, sampler="Euler",
                            scheduler="automatic")
    outcome: dict[str, Any] = {}

    def generate() -> None:
        try:
            api.txt2img(prompt=PROMPT, width=LONG_JOB["width"], height=LONG_JOB["height"],
                        steps=LONG_JOB["steps"], cfg_scale=0, seed=3)
            outcome["ended"] = "finished"
        except RuntimeError as exc:
            outcome["ended"] = exc.args

    worker = threading.Thread(target=generate, daemon=True)
    worker.start()
    deadline = time.monotonic() + JOB_TIMEOUT_S
    try:
        while True:
            progress = api.get_progress()
            if progress["state"]["sampling_step"] >= 2:
                break
            assert time.monotonic() < deadline, f"no step reported: {progress}"
            time.sleep(0.05)
        assert progress["state"]["sampling_steps"] == LONG_JOB["steps"]
        assert progress["state"]["job_count"] >= 1 and 0 < progress["progress"] < 1
        preview = progress["current_image"]  # live previews are on by default, as in A1111
        assert preview is not None
        assert Image.open(io.BytesIO(base64.b64decode(preview))).format == "JPEG"
    finally:
        assert api.interrupt() == {}
    worker.join(JOB_TIMEOUT_S)
    assert outcome["ended"][0] == 409 and "cancelled" in outcome["ended"][1]
    while api.get_progress()["state"]["job"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_sillytavern_connect_pick_model_and_generate(plain: ServerProc) -> None:
    """SillyTavern's calls, in its order (see the module docstring for the source)."""
    with httpx.Client(base_url=plain.base_url, timeout=300) as sd:
        assert sd.get("/sdapi/v1/options").status_code == 200  # /ping
        upscalers = [u["name"] for u in sd.get("/sdapi/v1/upscalers").json()]
        latent = [u["name"] for u in sd.get("/sdapi/v1/latent-upscale-modes").json()]
        upscalers[1:1] = latent
        assert upscalers[0] == "None"
        vae_answers = [sd.get(p) for p in ("/sdapi/v1/sd-vae", "/sdapi/v1/sd-modules")]
        lists = [r.json() for r in vae_answers if r.status_code == 200]
        assert lists and isinstance(lists[0], list)  # the first list answered wins
        samplers = [s["name"] for s in sd.get("/sdapi/v1/samplers").json()]
        schedulers = [s["name"] for s in sd.get("/sdapi/v1/schedulers").json()]
        models = [m["title"] for m in sd.get("/sdapi/v1/sd-models").json()]
        current = sd.get("/sdapi/v1/options").json()["sd_model_checkpoint"]  # /get-model
        assert current in models
        # /set-model: the user picks the (only) model; then wait until A1111 is idle
        assert sd.post("/sdapi/v1/options", json={"sd_model_checkpoint": models[0]}) \
            .status_code == 200
        deadline = time.monotonic() + JOB_TIMEOUT_S  # SillyTavern polls every 2 s, 10 times
        while True:
            progress = sd.get("/sdapi/v1/progress").json()
            if progress["progress"] == 0.0 and progress["state"]["job_count"] == 0:
                break
            assert time.monotonic() < deadline, f"never idle: {progress}"
            time.sleep(0.2)
        # /generate
        options = sd.get("/sdapi/v1/options").json()
        assert "forge_preset" not in options  # not Forge: no forge_additional_modules
        body = {
            "url": plain.base_url, "auth": "",
            "prompt": PROMPT, "negative_prompt": "lowres, bad anatomy",
            "sampler_name": samplers[0], "scheduler": schedulers[0],
            "steps": 2, "cfg_scale": 0, "width": 256, "height": 256, "seed": -1,
            "restore_faces": False, "enable_hr": False, "hr_upscaler": upscalers[0],
            "hr_scale": 2.0, "hr_additional_modules": [], "denoising_strength": 0.7,
            "hr_second_pass_steps": 0, "clip_skip": 1, "n_iter": 1,
            "s_churn": 0.0, "s_min_uncond": 0.0, "s_noise": 1.0, "s_tmax": None, "s_tmin": 0.0,
            "override_settings": {"CLIP_stop_at_last_layers": 1, "sd_vae": "N/A"},
            "override_settings_restore_afterwards": True,
            "save_images": True, "send_images": True,
            "do_not_save_grid": False, "do_not_save_samples": False,
        }
        r = sd.post("/sdapi/v1/txt2img", json=body)
        assert r.status_code == 200, r.text
        data = r.json()
        assert len(data["images"]) == 1 and _png(data["images"][0]).size == (256, 256)
        assert json.loads(data["info"])["negative_prompt"] == "lowres, bad anatomy"


def test_open_webui_verify_models_set_model_and_generate(plain: ServerProc) -> None:
    """Open WebUI's calls, in its order (see the module docstring for the source)."""
    headers = {"authorization": ""}  # what Open WebUI sends without A1111 auth
    with httpx.Client(base_url=plain.base_url, timeout=300, headers=headers) as sd:
        sd.get("/sdapi/v1/options").raise_for_status()  # verify_url
        models = [{"id": m["title"], "name": m["model_name"]}
                  for m in sd.get("/sdapi/v1/sd-models").json()]
        chosen = models[0]["id"]
        options = sd.get("/sdapi/v1/options").json()  # set_image_model
        if chosen != options["sd_model_checkpoint"]:
            options["sd_model_checkpoint"] = chosen
            sd.post("/sdapi/v1/options", json=options).raise_for_status()
        # the user typed the bare name in the settings: posted back with the whole object
        options["sd_model_checkpoint"] = models[0]["name"]
        sd.post("/sdapi/v1/options", json=options).raise_for_status()
        data = {"prompt": PROMPT, "batch_size": 2, "width": 256, "height": 256, "steps": 2,
                "negative_prompt": "text", "cfg_scale": 0.0, "sampler_name": "Euler",
                "scheduler": "Automatic"}
        r = sd.post("/sdapi/v1/txt2img", json=data)
        r.raise_for_status()
        res = r.json()
        assert [_png(b).size for b in res["images"]] == [(256, 256)] * 2
        stored = {**data, "info": res["info"]}  # what it keeps beside each image
        assert json.loads(stored["info"])["all_prompts"] == [PROMPT, PROMPT]


def test_sillytavern_abort_interrupts_the_running_generation(plain: ServerProc) -> None:
    """A closed SillyTavern request makes its server POST /sdapi/v1/interrupt."""
    body = {"prompt": PROMPT, "sampler_name": "Euler", "scheduler": "Automatic",
            "cfg_scale": 0, "width": LONG_JOB["width"], "height": LONG_JOB["height"],
            "steps": LONG_JOB["steps"]}
    answer: dict[str, httpx.Response] = {}
    thread = threading.Thread(target=lambda: answer.setdefault(
        "r", httpx.post(plain.base_url + "/sdapi/v1/txt2img", json=body, timeout=300)))
    thread.start()
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while httpx.get(plain.base_url + "/sdapi/v1/progress").json()["state"]["sampling_step"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert httpx.post(plain.base_url + "/sdapi/v1/interrupt").status_code == 200
    thread.join(JOB_TIMEOUT_S)
    assert answer["r"].status_code == 409
    job_id = answer["r"].json()["error"]["message"].split()[1]
    assert plain.job(job_id)["state"] in TERMINAL
