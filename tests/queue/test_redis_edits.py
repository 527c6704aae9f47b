"""Editing in Redis mode with real processes: the API stores the input images in the shared
data directory before it accepts the job; a worker (another process) reads them by id and
applies the LoRA; a worker killed with -9 loses nothing, its successor runs the edit."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from steadygen.engine.tiny_adapters import ensure_tiny_adapters

from .redis_support import (
    Proc,
    RedisServer,
    free_port,
    needs_redis,
    start_api,
    start_worker,
    wait_for,
    wait_ready,
)

pytestmark = [needs_redis, pytest.mark.redis, pytest.mark.timeout(300)]
SIDE = 256


def png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def edit_cluster(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path,
                 cache_dir: Path) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("redis-edits")
    adapters = ensure_tiny_adapters(cache_dir)
    env = {"STEADYGEN_LORA_DIR": str(adapters.lora_dir), "STEADYGEN_VISIBILITY_TIMEOUT_S": "3",
           "STEADYGEN_WARMUP_SIZES": f"{SIDE}x{SIDE}"}
    redis = RedisServer(root / "redis").start()
    port = free_port()
    procs: dict[str, Proc] = {}
    try:
        procs["w1"] = start_worker("w1", redis.url, root / "data", root / "logs", **env)
        procs["api"] = start_api("api", redis.url, root / "data", root / "logs", port, **env)
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, procs["api"], 60)
        yield {"base": base, "procs": procs, "redis": redis, "root": root, "env": env}
    finally:
        for p in procs.values():
            p.kill()
        redis.stop()


def job(base: str, job_id: str) -> dict[str, Any]:
    return httpx.get(f"{base}/v1/jobs/{job_id}", timeout=10).json()


def test_an_edit_runs_on_a_worker_and_survives_its_kill_9(edit_cluster: dict[str, Any]) -> None:
    base, procs = edit_cluster["base"], edit_cluster["procs"]
    submit = lambda body: httpx.post(base + "/v1/jobs", json=body, timeout=30)  # noqa: E731
    long_job = wait_for(lambda: submit({"prompt": "busy", "size": "512x512", "steps": 100})
                        .json().get("id"), 120, "the API to accept a job")
    wait_for(lambda: job(base, long_job).get("progress", {}).get("step", 0) >= 1, 180,
             "the long job to run on the worker")
    rng = np.random.default_rng(5)
    source = Image.fromarray(rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8))
    mask = Image.new("L", (SIDE, SIDE), 0)
    mask.paste(255, (64, 64, 192, 192))
    r = submit({"prompt": "a lamp", "init_image": png_b64(source), "mask": png_b64(mask),
                "size": f"{SIDE}x{SIDE}", "steps": 2, "loras": [{"name": "tiny-style"}]})
    assert r.status_code == 202, r.text
    edit = r.json()["id"]
    ref = r.json()["request"]["init_image"]
    assert (edit_cluster["root"] / "data" / "inputs" / f"{ref}.png").is_file()  # before it ran

    procs["w1"].kill()  # both jobs are in Redis and on disk, none finished
    procs["w2"] = start_worker("w2", edit_cluster["redis"].url, edit_cluster["root"] / "data",
                               edit_cluster["root"] / "logs", **edit_cluster["env"])
    done = wait_for(lambda: (v := job(base, edit))["state"] in ("succeeded", "failed") and v,
                    240, "the edit to end")
    assert done["state"] == "succeeded", (done, procs["w2"].log()[-3000:])
    assert done["request"]["mode"] == "inpaint" and done["timings"]["adapter_s"] > 0
    image = httpx.get(base + done["images"][0], timeout=10)
    out = np.asarray(Image.open(io.BytesIO(image.content)).convert("RGB"))
    assert (out[:64] == np.asarray(source)[:64]).all()  # outside the mask: the input's pixels
