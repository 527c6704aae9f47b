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


def read_image_text(data: bytes) -> dict[str, str]:
    """The text chunks of an image given as bytes (a PNG's tEXt/iTXt chunks). Raises
    ValueError when the bytes are not an image PIL can open."""
    import io

    from PIL import UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return {k: v for k, v in im.info.items() if isinstance(v, str)}
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError,
            Image.DecompressionBombError) as exc:  # what PIL raises on broken input
        raise ValueError(f"not a readable image ({type(exc).__name__})") from exc


def parse_parameters(text: str) -> dict[str, str]:
    """A1111's ``parameters`` text back into fields, as A1111's PNG-info does: the prompt
    (the lines before 'Negative prompt:'), the negative prompt, then the last line's
    'Key: value' pairs; 'Size: WxH' also gives 'Size-1' and 'Size-2'."""
    lines = text.strip().split("\n")
    settings = lines.pop() if lines and _looks_like_settings(lines[-1]) else ""
    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        if line.startswith("Negative prompt:") or negative:
            negative.append(line.removeprefix("Negative prompt:").strip() if not negative
                            else line)
        else:
            prompt.append(line)
    out = {"Prompt": "\n".join(prompt).strip(), "Negative prompt": "\n".join(negative).strip()}
    for part in _split_settings(settings):
        key, sep, value = part.partition(":")
        if sep:
            out[key.strip()] = value.strip().strip('"')
    if "x" in out.get("Size", ""):
        out["Size-1"], out["Size-2"] = out["Size"].split("x", 1)
    return out


def _looks_like_settings(line: str) -> bool:
    return line.startswith("Steps:") or (", " in line and ": " in line.split(", ")[0])


def _split_settings(line: str) -> list[str]:
    """'a: 1, b: "x, y", c: 2' -> ['a: 1', 'b: "x, y"', 'c: 2'] (commas in quotes kept)."""
    parts, current, quoted = [], "", False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current.strip())
    return parts
