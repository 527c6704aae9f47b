"""Live previews through the native job API: step events carry ``preview`` (a base64 JPEG of
the latents) only when the job asked for it, and asking changes neither the image nor the
job's shape."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from tests.server.conftest import PROMPT, ServerProc

JOB = {"prompt": PROMPT, "width": 256, "height": 320, "steps": 3, "seed": 4242}


def _steps(srv: ServerProc, job_id: str) -> list[dict]:
    events = srv.events(job_id, until=lambda e: e.event in ("succeeded", "failed", "cancelled"))
    assert events[-1].event == "succeeded", events[-1]
    return [e.data for e in events if e.event == "step"]


def _pixels(srv: ServerProc, job_id: str) -> bytes:
    r = srv.request("GET", f"/v1/jobs/{job_id}/images/0.png")
    assert r.status_code == 200
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")).tobytes()


def test_step_events_carry_a_preview_only_when_asked(main_server: ServerProc) -> None:
    with_preview = main_server.submit(**JOB, preview=True)
    steps = _steps(main_server, with_preview["id"])
    assert [s["step"] for s in steps] == [1, 2, 3]
    # the first step always has one; later ones as the 2 % budget allows (tiny steps are
    # a few ms, so some may go without)
    assert "preview" in steps[0]
    previews = [Image.open(io.BytesIO(base64.b64decode(s["preview"])))
                for s in steps if "preview" in s]
    assert {(p.format, p.size) for p in previews} == {("JPEG", (256 // 8 * 2, 320 // 8 * 2))}
    assert with_preview["request"]["preview"] is True

    plain = main_server.submit(**JOB)
    assert all("preview" not in s for s in _steps(main_server, plain["id"]))
    # the same seed and settings give the same image, previews or not
    assert _pixels(main_server, plain["id"]) == _pixels(main_server, with_preview["id"])


def test_preview_must_be_a_boolean(main_server: ServerProc) -> None:
    r = main_server.request("POST", "/v1/jobs", json={**JOB, "preview": "yes"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "preview"
