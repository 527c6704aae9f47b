"""The web page in a real headless Chromium (Debian's ``chromium``, driven by Playwright's
Python package) against a real ``steadygen serve`` on the tiny model.

Covered: generate with live progress to the last step and the image; the job in History
with its phase bar and per-step chart; the dashboard's charts receiving points and the job
timeline; the GPU dashboard (fed a recorded-style stream through ``page.route``: no GPU
here); cancelling a long job; errors shown next to their field (typed and from the API); the
API-key prompt; and the phone-sized layout. Screenshots of every view go to
``test-artifacts/web/``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
WAIT_MS = 120_000  # liveness bound for a job on a loaded machine; nothing asserts a duration

# Records every value the step counter shows, even several set within one task.
RECORD_STEPS = """
window.__steps = [];
document.addEventListener("DOMContentLoaded", () => {
  const el = document.getElementById("p-step");
  new MutationObserver((records) => {
    for (const r of records) for (const n of r.addedNodes) window.__steps.push(n.textContent);
  }).observe(el, { childList: true });
});
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (Debian package 'chromium')")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def web_server(server_factory: Callable[..., Any]) -> Any:
    """A server of this module's own: no key, its own data directory."""
    return server_factory()


class Page:
    """A page in a fresh browser context, with its uncaught errors collected."""

    def __init__(self, browser: Any, base_url: str, viewport: dict[str, int], key: str | None):
        self.base_url = base_url
        self.context = browser.new_context(viewport=viewport, device_scale_factor=1)
        self.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base_url)
        if key is not None:
            self.context.add_init_script(f"localStorage.setItem('steadygen.apiKey', {key!r})")
        self.context.add_init_script(RECORD_STEPS)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", self._console)

    def _console(self, message: Any) -> None:
        if "Content Security Policy" in message.text:  # the page broke its own CSP
            self.errors.append(message.text)

    def goto(self, hash_: str) -> Any:
        self.page.goto(f"{self.base_url}/#{hash_}")
        self.page.wait_for_selector(f"#view-{hash_.split('/')[0]}:not([hidden])")
        return self.page

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.evaluate("() => window.scrollTo(0, 0)")  # a sticky header, drawn once
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[..., Page]]:
    pages: list[Page] = []

    def make(server: Any, viewport: dict[str, int] = DESKTOP, key: str | None = None) -> Page:
        pages.append(Page(browser, server.base_url, viewport, key))
        return pages[-1]

    yield make
    for p in pages:
        p.context.close()
        assert not p.errors, f"uncaught errors in the page: {p.errors}"


def wait_until(page: Any, expression: str, timeout_ms: float = 30_000) -> None:
    """Poll a JavaScript expression until it holds. (Not wait_for_function: its in-page
    polling uses eval, which the page's Content-Security-Policy rightly forbids.)"""
    deadline = time.monotonic() + timeout_ms / 1000
    while not page.evaluate(f"() => {{ try {{ return Boolean({expression}); }} "
                            f"catch {{ return false; }} }}"):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout_ms / 1000:.0f} s: {expression}")
        page.wait_for_timeout(100)


def choose_custom_size(page: Any, width: int, height: int) -> None:
    page.check('input[name="size"][value="custom"]')
    page.fill("#width", str(width))
    page.fill("#height", str(height))


def test_generate_shows_progress_to_the_end_and_the_image(web_server: Any, open_page: Any) -> None:
    p = open_page(web_server)
    page = p.goto("generate")
    page.wait_for_selector("#tiny-banner:not([hidden])")  # zimage-tiny: images are noise
    page.fill("#prompt", "a lighthouse at dusk, volumetric light")
    choose_custom_size(page, 256, 256)
    page.fill("#steps", "6")
    page.fill("#seed", "1234")
    page.focus("#prompt")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector('#result[data-state="succeeded"]', timeout=WAIT_MS)

    steps = page.evaluate("window.__steps")
    assert steps[-1] == "6 / 6", steps  # progress reached the last step
    assert "0 / 6" in steps and any(s in steps for s in ("1 / 6", "2 / 6", "3 / 6")), steps
    bar = page.locator("#progress-bar")
    assert bar.get_attribute("aria-valuenow") == "6" and bar.get_attribute("aria-valuemax") == "6"

    image = page.locator('#result [data-testid="result-image"]')
    assert image.count() == 1
    wait_until(page, "document.querySelector('#result img').naturalWidth === 256")
    link = page.locator("#result a[download]")
    assert "/images/0.png" in (link.get_attribute("href") or "")
    assert page.locator('#result [data-testid="phase-bar"] [data-phase="steps"]').count() == 1

    assert page.locator("#generate").is_enabled()
    p.shot("generate-desktop")

    page.get_by_role("button", name="Copy parameters").click()
    page.wait_for_selector(".toast")
    copied = json.loads(page.evaluate("navigator.clipboard.readText()"))
    assert copied["seed"] == 1234 and copied["width"] == 256 and copied["steps"] == 6


def test_history_lists_the_job_with_its_phase_bar(web_server: Any, open_page: Any) -> None:
    job = web_server.submit(prompt="a red bicycle in the rain", width=256, height=256, steps=5, n=2)
    web_server.wait_done(job["id"])
    p = open_page(web_server)
    page = p.goto("history")
    row = page.locator(f'.job-row[data-job-id="{job["id"]}"]')
    row.wait_for()
    assert "a red bicycle in the rain" in row.inner_text()
    assert "256 × 256" in row.inner_text()
    assert row.locator('[data-state="succeeded"]').count() == 1
    p.shot("history-desktop")

    row.click()
    detail = page.locator(f'#job-detail[data-job-id="{job["id"]}"]')
    detail.wait_for()
    segments = detail.locator('[data-testid="phase-bar"] .seg')
    phases = [segments.nth(i).get_attribute("data-phase") for i in range(segments.count())]
    assert "steps" in phases and "decode" in phases, phases
    assert detail.locator('[data-testid="step-bars"] rect.bar').count() == 5
    assert detail.locator('[data-testid="result-image"]').count() == 2
    assert "Seed" in detail.locator("dl.params").first.inner_text()
    p.shot("history-detail-desktop")


def test_dashboard_charts_receive_points_and_jobs(web_server: Any, open_page: Any) -> None:
    p = open_page(web_server)
    page = p.goto("dashboard")
    page.wait_for_selector("#charts[data-mode]")  # "host" without a GPU: host charts only
    counter = "#chart-cpu canvas"
    wait_until(page, f"+document.querySelector('{counter}').dataset.points >= 1")
    first = int(page.get_attribute(counter, "data-points") or 0)
    wait_until(page, f"+document.querySelector('{counter}').dataset.points >= {first + 2}")
    for chart in ("rundelay", "psi", "queue"):
        assert int(page.get_attribute(f"#chart-{chart} canvas", "data-points") or 0) >= 1

    before = int(page.get_attribute("#timeline", "data-points") or 0)
    job = web_server.submit(prompt="a paper boat", width=256, height=256, steps=2)
    web_server.wait_done(job["id"])
    wait_until(page, f"+document.querySelector('#timeline').dataset.points > {before}")
    assert job["id"] in page.inner_text("#timeline-last")
    p.shot("dashboard-desktop")


def fake_gpu_stream(now: float, seconds: int = 150) -> str:
    """A telemetry stream as a GPU server sends it: heat builds, the clock drops under a
    thermal limit, and another process holds memory on the GPU."""
    events = []
    gib = 1024**3
    for i in range(seconds):
        t = now - seconds + i
        busy = 0.5 + 0.5 * math.sin(i / 9) > 0.3
        temp = 48 + 34 * (i / seconds) + (6 if busy else 0)
        hot = temp > 80
        clock = (1980 if not hot else 1620 - 4 * (temp - 80)) * (1.0 if busy else 0.4)
        mask = 0x20 if hot else (0x4 if busy else 0x1)
        names = {0x1: ["gpu_idle"], 0x4: ["sw_power_cap"], 0x20: ["sw_thermal"]}[mask]
        gpu = {
            "index": 0,
            "name": "NVIDIA H100 80GB HBM3",
            "uuid": "GPU-0",
            "sm_clock_hz": clock * 1e6,
            "sm_clock_max_hz": 1.98e9,
            "mem_clock_hz": 2.6e9,
            "mem_clock_max_hz": 2.6e9,
            "util_gpu_pct": 97.0 if busy else 3.0,
            "util_mem_pct": 61.0 if busy else 1.0,
            "power_w": (560 + 60 * math.sin(i / 3)) if busy else 95.0,
            "power_limit_w": 700.0,
            "temp_c": temp,
            "temp_margin_c": 87 - temp,
            "mem_used_bytes": 31 * gib,
            "mem_total_bytes": 80 * gib,
            "pstate": 0,
            "clock_event_mask": mask,
            "clock_events": names,
        }
        procs = [
            {
                "gpu_index": 0,
                "pid": 4242,
                "name": "steadygen",
                "used_bytes": 24 * gib,
                "sm_util_pct": None,
                "ours": True,
                "kind": "compute",
            },
            {
                "gpu_index": 0,
                "pid": 5150,
                "name": "blender",
                "used_bytes": 7 * gib,
                "sm_util_pct": None,
                "ours": False,
                "kind": "compute",
            },
        ]
        host = {
            "cpu_util_pct": 22.0 + 10 * math.sin(i / 5),
            "run_delay_ns": i * 2_000_000,
            "cpu_count": 16,
            "load_avg": [2.1, 1.9, 1.5],
            "top_foreign": [],
            "psi_cpu": {"some_avg10_pct": 1.2, "some_total_us": 0},
            "psi_memory": {"some_avg10_pct": 0.0, "some_total_us": 0},
            "psi_io": {"some_avg10_pct": 0.3, "some_total_us": 0},
        }
        sample = {
            "t_mono": 1000.0 + i,
            "t_wall": t,
            "host": host,
            "gpus": [gpu],
            "processes": procs if i % 2 == 0 else None,
        }
        running = [{"job_id": "j0000demo0001", "step": 3, "steps": 8, "eta_s": 1.4}] if busy else []
        data = {
            "t_wall": t,
            "sample": sample,
            "gpu_backend": "nvml",
            "queue_depth": 2 if busy and i % 20 < 8 else 0,
            "running": running,
        }
        events.append(f"event: sample\r\ndata: {json.dumps(data)}\r\n\r\n")
        if i % 12 == 6:
            slow = temp > 80
            job = {
                "job_id": f"jdemo{i:04d}",
                "state": "failed" if i == 102 else "succeeded",
                "t_wall": t,
                "total_s": 1.9 + (0.9 if slow else 0.1 * math.sin(i)),
                "queue_wait_s": 0.4 if i % 24 == 6 else 0.0,
                "main_cause": "gpu_clocks" if slow else None,
            }
            events.append(f"event: job\r\ndata: {json.dumps(job)}\r\n\r\n")
    return "".join(events)


def test_dashboard_gpu_view_from_a_gpu_stream(web_server: Any, open_page: Any) -> None:
    p = open_page(web_server)
    served = {"n": 0}

    def stream(route: Any) -> None:
        served["n"] += 1
        body = fake_gpu_stream(time.time()) if served["n"] == 1 else ": idle\n\n"
        route.fulfill(status=200, headers={"content-type": "text/event-stream"}, body=body)

    p.page.route("**/v1/telemetry/stream*", stream)
    page = p.goto("dashboard")
    page.wait_for_selector('#charts[data-mode="gpu"]')
    wait_until(page, "+document.querySelector('#chart-util canvas').dataset.points >= 150")
    for chart in ("util", "clock", "temp", "power", "memory", "queue"):
        assert int(page.get_attribute(f"#chart-{chart} canvas", "data-points") or 0) >= 150
    chips = page.inner_text("#indicators")
    assert "thermal (software)" in chips and "blender" in chips, chips
    assert "ours" in page.inner_text("#chart-memory .readout")
    assert int(page.get_attribute("#timeline", "data-points") or 0) >= 12
    p.shot("dashboard-gpu-simulated-desktop")


def test_cancel_a_long_job(web_server: Any, open_page: Any) -> None:
    p = open_page(web_server)
    page = p.goto("generate")
    page.fill("#prompt", "a very slow painting")
    page.check('input[name="size"][value="512x512"]')
    page.fill("#steps", "100")
    page.click("#generate")
    page.wait_for_selector("#progress:not([hidden])")
    wait_until(page, "+document.querySelector('#p-step').dataset.step >= 1", WAIT_MS)
    assert page.inner_text("#p-step").endswith("/ 100")
    assert page.inner_text("#p-eta") not in ("", "–")
    p.shot("generate-running-desktop")
    page.click("#cancel")
    page.wait_for_selector('#result[data-state="cancelled"]', timeout=WAIT_MS)
    assert "Stopped at step" in page.inner_text("#result")
    job_id = page.get_attribute("#result", "data-job-id")
    assert job_id and web_server.job(job_id)["state"] == "cancelled"


def test_preview_shows_the_image_forming_during_a_long_job(
    web_server: Any, open_page: Any
) -> None:
    """The running job's card shows the live preview from its step events, and it changes
    as the steps go (512x512: latents 64x64, the preview twice that)."""
    p = open_page(web_server)
    page = p.goto("generate")
    page.fill("#prompt", "a slowly forming picture")
    page.check('input[name="size"][value="512x512"]')
    page.fill("#steps", "100")
    page.click("#generate")
    page.wait_for_selector("#p-preview:not([hidden])", timeout=WAIT_MS)
    wait_until(page, "document.querySelector('#p-preview').naturalWidth === 128", WAIT_MS)
    first_src = page.get_attribute("#p-preview", "src") or ""
    first_step = int(page.get_attribute("#p-preview", "data-step") or "0")
    assert first_src.startswith("data:image/jpeg;base64,") and first_step >= 1
    wait_until(page, f"+document.querySelector('#p-preview').dataset.step > {first_step}",
               WAIT_MS)
    assert page.get_attribute("#p-preview", "src") != first_src  # the picture forms
    box = page.locator("#p-preview").bounding_box()
    assert box is not None and box["width"] >= 256  # drawn larger than it was sent
    assert "preview at step" in (page.get_attribute("#p-preview", "alt") or "")
    p.shot("generate-preview-desktop")
    page.click("#cancel")
    page.wait_for_selector('#result[data-state="cancelled"]', timeout=WAIT_MS)
    assert page.locator("#p-preview").is_hidden()


def test_errors_appear_next_to_their_fields(web_server: Any, open_page: Any) -> None:
    p = open_page(web_server)
    page = p.goto("generate")
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)

    # The size rule is checked as you type, before anything is sent.
    page.fill("#prompt", "a small square")
    choose_custom_size(page, 250, 256)
    size_error = page.locator('[data-error-for="size"]')
    assert "multiple of 16" in size_error.inner_text()
    assert "(got 250); try 256" in size_error.inner_text()
    assert page.get_attribute("#width", "aria-invalid") == "true"
    page.click("#generate")
    assert posts == [] and page.locator("#progress").is_hidden()
    p.shot("generate-size-error-desktop")
    page.fill("#width", "256")
    assert size_error.inner_text() == ""

    # Rules the server checks come back from the API, each shown at its own control.
    page.fill("#prompt", "   ")
    page.fill("#steps", "101")
    page.fill("#guidance", "40")
    page.click("#generate")
    steps_error = page.locator("#steps-err")
    steps_error.wait_for(state="visible")
    assert "101" in steps_error.inner_text() and "100" in steps_error.inner_text()
    assert page.get_attribute("#steps", "aria-invalid") == "true"
    assert "must not be empty" in page.inner_text("#prompt-err")
    assert "30" in page.inner_text("#guidance-err")
    assert page.inner_text("#form-error") == ""
    assert len(posts) == 1
    p.shot("generate-api-errors-desktop")


def test_the_page_checks_the_limits_this_server_publishes(
    server_factory: Callable[..., Any], open_page: Any
) -> None:
    """The size and count rules come from GET /readyz, not from the page's own copy."""
    small = server_factory(env={"STEADYGEN_LIMIT_MAX_SIDE": "512", "STEADYGEN_LIMIT_MAX_N": "2"})
    p = open_page(small)
    page = p.goto("generate")
    wait_until(page, "document.querySelector('#width').max === '512'")
    page.fill("#prompt", "a small square")
    choose_custom_size(page, 768, 256)
    size_error = page.locator('[data-error-for="size"]')
    assert "from 256 to 512 (got 768)" in size_error.inner_text()
    assert page.is_visible('input[name="n"][value="2"]')
    assert not page.is_visible('input[name="n"][value="3"]')
    page.fill("#width", "512")
    assert size_error.inner_text() == ""


def test_api_key_prompt(main_server: Any, open_page: Any) -> None:
    p = open_page(main_server)
    page = p.goto("history")
    dialog = page.locator("#key-dialog")
    dialog.wait_for(state="visible")  # the first API call got a 401
    page.fill("#key-input", "not-the-key")
    page.click("#key-save")
    wait_until(page, "document.querySelector('#key-error').textContent.includes('wrong')")
    assert dialog.is_visible()
    p.shot("api-key-prompt-desktop")
    page.fill("#key-input", main_server.api_key)
    page.click("#key-save")
    dialog.wait_for(state="hidden")
    page.wait_for_selector("#history-items[data-count]", state="attached")
    assert page.evaluate("localStorage.getItem('steadygen.apiKey')") == main_server.api_key

    # With a key, images come through fetch (an <img> cannot send the header).
    page.goto(f"{main_server.base_url}/#generate")
    page.fill("#prompt", "a locked door")
    choose_custom_size(page, 256, 256)
    page.fill("#steps", "2")
    page.click("#generate")
    page.wait_for_selector('#result[data-state="succeeded"]', timeout=WAIT_MS)
    wait_until(page, "document.querySelector('#result img').src.startsWith('blob:') && "
                     "document.querySelector('#result img').naturalWidth > 0")
    assert not dialog.is_visible()


def test_page_files_are_served_with_etag_and_csp(web_server: Any) -> None:
    with web_server.client() as c:
        page = c.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        script = c.get("/static/app.js")
        assert script.headers["content-type"].startswith("text/javascript")
        again = c.get("/static/app.js", headers={"If-None-Match": script.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
        for bad in ("/static/.hidden.js", "/static/web.py", "/static/missing.css"):
            assert c.get(bad).status_code == 404, bad


SSE_TEXT = (
    "id: 1.0\r\nevent: step\r\ndata: {\"step\": 1}\r\n\r\n"  # CRLF, as sse-starlette sends
    ": ping - a comment\n\n"
    "data: two\ndata: lines\n\n"  # LF; the id carries over
    "event: café\rid: 1.1\rdata: ☕\r\r"  # CR alone; multi-byte UTF-8
    "data: no blank line at the end, so never dispatched"
)
SSE_EVENTS = [
    {"id": "1.0", "event": "step", "data": '{"step": 1}'},
    {"id": "1.0", "event": "message", "data": "two\nlines"},
    {"id": "1.1", "event": "café", "data": "☕"},
]


@pytest.mark.parametrize("chunk_bytes", [1, 3, 4096])
def test_sse_reader_across_chunk_boundaries(
    web_server: Any, open_page: Any, chunk_bytes: int
) -> None:
    """The page's own SSE reader (fetch + ReadableStream; EventSource cannot send a key):
    any split of the bytes, even inside a CRLF or a UTF-8 character, gives the same events."""
    page = open_page(web_server).goto("generate")
    events = page.evaluate(
        """async ([text, size]) => {
          const { readEvents } = await import("/static/api.js");
          const bytes = new TextEncoder().encode(text);
          const stream = new ReadableStream({ start(c) {
            for (let i = 0; i < bytes.length; i += size) c.enqueue(bytes.slice(i, i + size));
            c.close();
          } });
          const out = [];
          await readEvents(stream, (ev) => { out.push(ev); return false; });
          return out;
        }""",
        [SSE_TEXT, chunk_bytes],
    )
    assert events == SSE_EVENTS


def test_phone_layout(web_server: Any, open_page: Any) -> None:
    job = web_server.submit(prompt="a tall lighthouse", width=256, height=256, steps=4)
    web_server.wait_done(job["id"])
    p = open_page(web_server, viewport=PHONE)
    for view in ("generate", "history", f"history/{job['id']}", "dashboard"):
        page = p.goto(view)
        if view.startswith("history/"):
            page.wait_for_selector('#job-detail [data-testid="phase-bar"]')
            assert page.locator(".history-list").is_hidden()  # the detail takes the screen
        elif view == "history":
            page.wait_for_selector(".job-row")
        elif view == "dashboard":
            wait_until(page, "+document.querySelector('#chart-cpu canvas')?.dataset.points >= 2")
        overflow = page.evaluate("document.documentElement.scrollWidth")
        assert overflow <= PHONE["width"], f"{view}: the page is {overflow}px wide"
        p.shot(f"{view.split('/')[0]}{'-detail' if '/' in view else ''}-phone")
