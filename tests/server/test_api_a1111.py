"""AUTOMATIC1111-compatible routes, called the way A1111 clients call them."""

from __future__ import annotations

import base64
import io
import json
import time

from PIL import Image

from tests.server.conftest import LONG_JOB, PROMPT, ServerProc

# What an A1111 client (a web UI plugin, a script) typically sends: many fields that have
# no meaning for Z-Image, which the server accepts and ignores.
A1111_BODY = {
    "prompt": PROMPT,
    "negative_prompt": "blurry",
    "width": 256,
    "height": 256,
    "steps": 2,
    "cfg_scale": 0,
    "seed": 4321,
    "batch_size": 2,
    "n_iter": 1,
    "sampler_name": "Euler",
    "scheduler": "Automatic",
    "enable_hr": False,
    "hr_scale": 2,
    "denoising_strength": 0.7,
    "restore_faces": False,
    "tiling": False,
    "styles": [],
    "override_settings": {"sd_model_checkpoint": "zimage-tiny", "CLIP_stop_at_last_layers": 2},
    "send_images": True,
    "save_images": False,
    "alwayson_scripts": {},
}


def test_txt2img_returns_pngs_parameters_and_info(main_server: ServerProc) -> None:
    r = main_server.request("POST", "/sdapi/v1/txt2img", json=A1111_BODY, timeout=300)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"images", "parameters", "info"}
    assert len(body["images"]) == 2
    for b64 in body["images"]:
        image = Image.open(io.BytesIO(base64.b64decode(b64)))
        assert image.format == "PNG" and image.size == (256, 256)
    assert body["parameters"]["prompt"] == PROMPT and body["parameters"]["steps"] == 2
    assert isinstance(body["info"], str)  # A1111 sends info as a JSON string
    info = json.loads(body["info"])
    assert info["seed"] == 4321 and info["all_seeds"] == [4321, 4322]
    assert info["all_prompts"] == [PROMPT, PROMPT]
    assert (info["width"], info["height"], info["steps"]) == (256, 256, 2)
    job = main_server.job(info["steadygen_job"])
    assert job["state"] == "succeeded" and job["request"]["negative_prompt"] == "blurry"


def test_seed_minus_one_means_random(main_server: ServerProc) -> None:
    body = {**A1111_BODY, "seed": -1, "batch_size": 1}
    r = main_server.request("POST", "/sdapi/v1/txt2img", json=body, timeout=300)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert 0 <= info["seed"] <= 2**32 - 1 and info["all_seeds"] == [info["seed"]]


def test_invalid_a1111_input_names_the_field(main_server: ServerProc) -> None:
    r = main_server.request("POST", "/sdapi/v1/txt2img", json={**A1111_BODY, "steps": 0})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "steps"


def test_progress_during_a_long_job_then_interrupt(main_server: ServerProc) -> None:
    idle = main_server.request("GET", "/sdapi/v1/progress").json()
    assert idle["state"]["job"] == "" and idle["progress"] == 0.0
    job = main_server.submit(**LONG_JOB)
    main_server.wait_running(job["id"])
    try:
        progress = main_server.request("GET", "/sdapi/v1/progress").json()
        state = progress["state"]
        assert state["job"] == job["id"]
        assert 1 <= state["sampling_step"] < state["sampling_steps"] == 100
        assert 0 < progress["progress"] < 1
        assert progress["eta_relative"] >= 0
        assert progress["textinfo"].startswith("step ")
        # A1111 clients stop the current job with /interrupt.
        r = main_server.request("POST", "/sdapi/v1/interrupt")
        assert r.status_code == 200
        final = main_server.wait_done(job["id"])
        assert final["state"] == "cancelled"
    finally:
        if main_server.job(job["id"])["state"] not in ("succeeded", "failed", "cancelled"):
            main_server.cancel_and_wait(job["id"])
    deadline = time.monotonic() + 30
    while main_server.request("GET", "/sdapi/v1/progress").json()["state"]["job"]:
        assert time.monotonic() < deadline, "progress still shows a job after it ended"
        time.sleep(0.05)


def test_sd_models_lists_the_served_model(main_server: ServerProc) -> None:
    models = main_server.request("GET", "/sdapi/v1/sd-models").json()
    assert [m["model_name"] for m in models] == ["zimage-tiny"]
