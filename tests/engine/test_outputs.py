"""PNG files carry their parameters: the A1111 ``parameters`` text and a ``steadygen`` JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from steadygen.engine.outputs import (
    SAMPLER_NAME,
    a1111_parameters,
    read_png_metadata,
    save_png,
    unique_stem,
)
from steadygen.errors import StorageError


def parse_a1111(text: str) -> tuple[str, str | None, dict[str, str]]:
    """(prompt, negative prompt, key/value pairs), the way A1111 tools read the chunk."""
    lines = text.split("\n")
    pairs = dict(part.split(": ", 1) for part in lines[-1].split(", "))
    negative = None
    prompt_lines = lines[:-1]
    if prompt_lines and prompt_lines[-1].startswith("Negative prompt: "):
        negative = prompt_lines.pop()[len("Negative prompt: ") :]
    return "\n".join(prompt_lines), negative, pairs


def test_a1111_text_with_and_without_negative(make_req: Any) -> None:
    req = make_req(guidance=3.5, negative_prompt="blurry", steps=8, seed=77, width=320)
    prompt, negative, pairs = parse_a1111(a1111_parameters(req, "zimage-tiny", 78))
    assert prompt == "a lighthouse at dusk" and negative == "blurry"
    assert pairs == {
        "Steps": "8",
        "Sampler": SAMPLER_NAME,
        "CFG scale": "3.5",
        "Seed": "78",  # the seed passed in (image k of a batch), not req.seed
        "Size": "320x256",
        "Model": "zimage-tiny",
    }
    text = a1111_parameters(make_req(), "zimage-tiny", 1)
    assert "Negative prompt" not in text and "CFG scale: 0," in text


def test_save_png_writes_both_chunks_atomically(tmp_path: Path) -> None:
    image = Image.new("RGB", (32, 16), (10, 20, 30))
    meta = {"parameters": {"seed": 3}, "timings": {"total_s": 1.5}}
    path = save_png(image, tmp_path / "sub" / "a.png", parameters="p\nSteps: 1", metadata=meta)
    assert path == tmp_path / "sub" / "a.png" and path.is_file()
    assert os.listdir(path.parent) == ["a.png"]  # no temp file left behind
    chunks = read_png_metadata(path)
    assert chunks["parameters"] == "p\nSteps: 1"
    assert json.loads(chunks["steadygen"]) == meta
    with Image.open(path) as back:
        assert back.size == (32, 16) and back.getpixel((0, 0)) == (10, 20, 30)


def test_save_png_failure_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="cannot write"):
        save_png(Image.new("RGB", (4, 4)), blocker / "a.png", parameters="", metadata={})


def test_unique_stem_sorts_by_time_and_does_not_collide() -> None:
    stems = {unique_stem("job-") for _ in range(200)}
    assert len(stems) == 200
    assert all(s.startswith("job-20") for s in stems)


def test_engine_png_metadata_reads_back(engine: Any, tmp_path: Path, make_req: Any) -> None:
    req = make_req(steps=3, seed=9, guidance=2.0, negative_prompt="fog")
    result = engine.generate(req, save_dir=tmp_path, file_prefix="t-")
    [path] = result.paths
    assert path.parent == tmp_path and path.name.startswith("t-") and path.suffix == ".png"
    chunks = read_png_metadata(path)

    prompt, negative, pairs = parse_a1111(chunks["parameters"])
    assert prompt == "a lighthouse at dusk" and negative == "fog"
    assert pairs["Steps"] == "3" and pairs["Sampler"] == SAMPLER_NAME
    assert pairs["CFG scale"] == "2" and pairs["Seed"] == "9"
    assert pairs["Size"] == "256x256" and pairs["Model"] == "zimage-tiny"

    meta = json.loads(chunks["steadygen"])
    assert meta["parameters"] == {**req.to_dict(), "seed": 9}
    assert meta["index"] == 0 and meta["model"] == "zimage-tiny" and meta["device"] == "cpu"
    timings = meta["timings"]
    assert len(timings["steps_s"]) == 3 and timings["total_s"] > 0
    assert timings["decode_s"] > 0 and "marks" not in timings
    assert {"steadygen", "torch", "diffusers", "transformers"} <= set(meta["versions"])
    assert meta["options"]["applied"]["attention_backend"] == "native"
    # the file's image is the result's image
    with Image.open(path) as back:
        assert back.tobytes() == result.images[0].tobytes()


def test_no_save_dir_writes_nothing(engine: Any, tmp_path: Path, make_req: Any) -> None:
    result = engine.generate(make_req(steps=2), save_dir=None)
    assert result.paths == [] and len(result.images) == 1
    assert result.timings.save_s < result.timings.decode_s
