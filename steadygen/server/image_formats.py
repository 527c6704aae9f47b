"""A finished job's PNG in the format a client asked for (OpenAI's ``output_format`` and
``output_compression``): png is the file itself, with its parameters inside; jpeg and webp
are encoded from it at the asked quality."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
DEFAULT_COMPRESSION = 100  # OpenAI's default: full quality


def encode(path: Path, fmt: str, compression: int | None = None) -> bytes:
    if fmt == "png":
        return path.read_bytes()
    quality = DEFAULT_COMPRESSION if compression is None else compression
    with Image.open(path) as im:
        return reencode(im, fmt, quality)


def reencode(image: Image.Image, fmt: str, quality: int = DEFAULT_COMPRESSION) -> bytes:
    out = io.BytesIO()
    if fmt == "png":
        image.save(out, format="PNG")
    else:
        image.convert("RGB").save(out, format=fmt.upper(), quality=quality)
    return out.getvalue()


def reencode_bytes(data: bytes, fmt: str, quality: int = DEFAULT_COMPRESSION) -> bytes:
    """An image given as bytes (a JPEG preview) in another format."""
    with Image.open(io.BytesIO(data)) as im:
        return reencode(im, fmt, quality)
