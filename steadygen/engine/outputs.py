"""PNG files with their parameters inside: an AUTOMATIC1111-style ``parameters`` text chunk,
which image viewers and A1111 tools read, and a ``steadygen`` JSON chunk with everything."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from steadygen.errors import StorageError
from steadygen.request import GenerationRequest

SAMPLER_NAME = "FlowMatch Euler"


def a1111_parameters(req: GenerationRequest, model: str, seed: int) -> str:
    """The text A1111 writes: prompt, 'Negative prompt:' line, then 'Key: value' pairs."""
    tags = "".join(f" <lora:{s.name}:{s.weight:g}>" for s in req.loras)  # as A1111 keeps them
    lines = [req.prompt + tags]
    if req.negative_prompt:
        lines.append(f"Negative prompt: {req.negative_prompt}")
    edit = f", Denoising strength: {req.strength:g}" if req.mode != "txt2img" else ""
    lines.append(
        f"Steps: {req.steps}, Sampler: {SAMPLER_NAME}, CFG scale: {req.guidance:g}, "
        f"Seed: {seed}, Size: {req.width}x{req.height}, Model: {model}{edit}"
    )
    return "\n".join(lines)


def unique_stem(prefix: str = "") -> str:
    """Sortable by time, collision-free across processes: UTC time, then random hex."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{prefix}{stamp}-{secrets.token_hex(4)}"


def save_png(
    image: Image.Image,
    path: Path,
    *,
    parameters: str,
    metadata: dict[str, Any],
) -> Path:
    """Write atomically (temp file, fsync, rename) so a crash never leaves half a PNG."""
    info = PngInfo()
    info.add_text("parameters", parameters)
    info.add_text("steadygen", json.dumps(metadata, sort_keys=True))
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            image.save(fh, format="PNG", pnginfo=info)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):  # e.g. the parent is a file: nothing to clean
            tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path


def read_png_metadata(path: Path) -> dict[str, str]:
    """The text chunks of a PNG (parameters, steadygen)."""
    with Image.open(path) as im:
        return {k: v for k, v in im.info.items() if isinstance(v, str)}
