"""Editing on the web page in a real headless Chromium against a real server with the tiny
LoRAs and ControlNet: pick an image, paint a mask on the canvas, choose a LoRA, generate;
the kept pixels are the input's; History shows the input next to the output; the phone
layout fits."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from steadygen.engine.tiny_adapters import ensure_tiny_adapters
from tests.server import test_web as web
from tests.server.test_web import PHONE, WAIT_MS, choose_custom_size, wait_until

pytestmark = pytest.mark.browser
browser = web.browser  # the same headless Chromium and page fixtures as test_web
open_page = web.open_page
SIDE = 256


@pytest.fixture(scope="module")
def edit_web_server(server_factory: Callable[..., Any], cache_dir: Path) -> Any:
    adapters = ensure_tiny_adapters(cache_dir)
    return server_factory(env={"STEADYGEN_LORA_DIR": str(adapters.lora_dir),
                               "STEADYGEN_CONTROLNET": str(adapters.controlnet_dir),
                               "STEADYGEN_WARMUP_SIZES": f"{SIDE}x{SIDE}"})


@pytest.fixture(scope="module")
def picture_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(3)
    path = tmp_path_factory.mktemp("web-edit") / "photo.png"
    Image.fromarray(rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8)).save(path)
    return path


def paint_centre(page: Any) -> None:
    """Drag the brush across the middle of the mask canvas."""
    page.locator("#edit-mask").scroll_into_view_if_needed()
    box = page.locator("#edit-mask").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.35, y)
    page.mouse.down()
    for k in range(1, 11):
        page.mouse.move(box["x"] + box["width"] * (0.35 + 0.03 * k), y)
    page.mouse.up()


def test_paint_a_mask_pick_a_lora_and_generate(
    edit_web_server: Any, open_page: Any, picture_file: Path
) -> None:
    p = open_page(edit_web_server)
    page = p.goto("generate")
    page.fill("#prompt", "a red hat")
    choose_custom_size(page, SIDE, SIDE)
    page.fill("#steps", "2")
    page.click("#edit-panel summary")
    page.set_input_files("#edit-file", str(picture_file))
    page.wait_for_selector("#edit-stage:not([hidden])")
    page.wait_for_selector('[data-lora="tiny-style"]')
    assert page.locator("#edit-control-field").is_visible()  # a ControlNet is configured
    page.check('[data-lora="tiny-style"]')
    page.fill('[data-weight-for="tiny-style"]', "0.5")
    page.evaluate("""() => { const s = document.getElementById('edit-strength');
        s.value = '1'; s.dispatchEvent(new Event('input')); }""")
    assert page.locator("#edit-strength-value").inner_text() == "1.00"
    paint_centre(page)
    page.click("#generate")
    page.wait_for_selector('#result[data-state="succeeded"]', timeout=WAIT_MS)
    job_id = page.get_attribute("#result", "data-job-id")
    p.shot("edit-desktop")

    job = edit_web_server.job(job_id)
    req = job["request"]
    assert req["mode"] == "inpaint" and req["strength"] == 1.0
    assert req["loras"] == [{"name": "tiny-style", "weight": 0.5}]
    mask = Image.open(io.BytesIO(edit_web_server.request(
        "GET", f"/v1/inputs/{req['mask']}.png").content))
    box = mask.getbbox()  # the painted stroke, across the middle
    assert box is not None and box[0] > SIDE * 0.2 and box[2] < SIDE * 0.9
    out = np.asarray(Image.open(io.BytesIO(edit_web_server.request(
        "GET", job["images"][0]).content)).convert("RGB"))
    source = np.asarray(Image.open(picture_file).convert("RGB"))
    assert (out[:40] == source[:40]).all()  # far from the stroke: the input's pixels
    assert (out[box[1]:box[3], box[0]:box[2]] != source[box[1]:box[3], box[0]:box[2]]).any()

    page.goto(f"{edit_web_server.base_url}/#history/{job_id}")
    page.wait_for_selector('[data-testid="input-init_image"]')
    wait_until(page, "document.querySelector('[data-testid=\"input-init_image\"]')"
                     ".naturalWidth === 256")
    assert page.locator('[data-testid="input-mask"]').count() == 1
    assert page.locator('.in-out [data-testid="result-image"]').count() == 1
    p.shot("edit-history-desktop")


def test_eraser_clear_and_invert_change_the_mask(
    edit_web_server: Any, open_page: Any, picture_file: Path
) -> None:
    p = open_page(edit_web_server)
    page = p.goto("generate")
    page.click("#edit-panel summary")
    page.set_input_files("#edit-file", str(picture_file))
    page.wait_for_selector("#edit-stage:not([hidden])")
    count = """() => { const c = document.getElementById('edit-mask');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }"""
    paint_centre(page)
    painted = page.evaluate(count)
    assert painted > 0
    page.click("#edit-erase")
    paint_centre(page)
    assert page.evaluate(count) < painted
    page.click("#edit-invert")
    assert page.evaluate(count) > SIDE * SIDE / 2
    page.click("#edit-clear")
    assert page.evaluate(count) == 0


def test_a_bad_image_and_a_bad_lora_weight_show_next_to_their_fields(
    edit_web_server: Any, open_page: Any
) -> None:
    p = open_page(edit_web_server)
    page = p.goto("generate")
    page.fill("#prompt", "a cat")
    choose_custom_size(page, SIDE, SIDE)
    page.click("#edit-panel summary")
    page.wait_for_selector('[data-lora="tiny-style"]')
    page.check('[data-lora="tiny-style"]')
    page.fill('[data-weight-for="tiny-style"]', "7")
    page.click("#generate")
    error = page.locator('[data-error-for="loras"]')
    wait_until(page, "document.querySelector('[data-error-for=\"loras\"]').textContent !== ''")
    assert "from -2 to 2" in error.inner_text()
    page.set_input_files("#edit-file", files=[{"name": "x.png", "mimeType": "image/png",
                                               "buffer": b"not a png"}])
    wait_until(page, "document.getElementById('edit-err').textContent !== ''")
    assert "not an image" in page.locator("#edit-err").inner_text()


def test_phone_width_fits_with_the_mask_canvas(
    edit_web_server: Any, open_page: Any, picture_file: Path
) -> None:
    p = open_page(edit_web_server, viewport=PHONE)
    page = p.goto("generate")
    page.click("#edit-panel summary")
    page.set_input_files("#edit-file", str(picture_file))
    page.wait_for_selector("#edit-stage:not([hidden])")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], width
    box = page.locator("#edit-mask").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    paint_centre(page)  # touch-sized painting works at this width too
    p.shot("edit-phone")
