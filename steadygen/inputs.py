"""Input images of edit requests: checked, normalised and stored by content before a job is
accepted, so a job that survives a crash still finds its images.

Every entry point (OpenAI edits, AUTOMATIC1111 img2img, native jobs, the upload endpoint)
turns uploaded bytes into a *reference*: the sha256 of the normalised PNG, stored once at
``<inputs_dir>/<sha256>.png``. The request carries the reference; the engine reads the file.

Bad bytes are a ``InvalidRequest`` naming the field: not an image, a truncated file, a
decompression bomb (the declared size is checked before any pixel is decoded), an animated
or 16-bit image, a mask of another size than its image or a mask with nothing to redo.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steadygen.config import Limits
from steadygen.errors import FieldError, InvalidRequest, StorageError

REF_RE = re.compile(r"^[0-9a-f]{64}$")
FORMATS = ("PNG", "JPEG", "WEBP")


@dataclass(frozen=True)
class StoredInput:
    """An input image on disk: its reference and its size in pixels."""

    ref: str
    width: int
    height: int

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.ref, "width": self.width, "height": self.height}


def _bad(field: str, message: str) -> InvalidRequest:
    return InvalidRequest([FieldError(field, message)])


def decode_base64(text: Any, field: str) -> bytes:
    """Base64 text, or a ``data:image/...;base64,`` URL, to bytes."""
    if not isinstance(text, str) or not text:
        raise _bad(field, "must be a base64-encoded image (got an empty or non-text value)")
    if text.startswith("data:"):
        _, sep, text = text.partition(",")
        if not sep:
            raise _bad(field, "is a data URL without a comma before its data")
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise _bad(field, "is not valid base64") from None


def open_image(data: bytes, field: str, limits: Limits) -> Any:
    """Decode ``data`` into a PIL image with its pixels loaded, or raise InvalidRequest.

    The declared size is checked before decoding, so a small file that claims 50000x50000
    pixels costs nothing. Orientation from EXIF is applied.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise _bad(field, "is empty; send a PNG, JPEG or WebP image")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except (UnidentifiedImageError, Image.DecompressionBombError,
                Image.DecompressionBombWarning, OSError, ValueError, SyntaxError) as exc:
            raise _bad(field, _why_not_image(exc, limits)) from None
        _check_header(image, field, limits)
        try:
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bad(field, _why_not_image(exc, limits)) from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise _bad(field, f"could not be decoded ({exc}); is the file truncated?") from None
    return ImageOps.exif_transpose(image)


def _why_not_image(exc: BaseException, limits: Limits) -> str:
    from PIL import Image

    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"must have at most {limits.max_input_pixels} pixels (a decompression bomb? {exc})"
    return "is not an image Pillow can read; send a PNG, JPEG or WebP image"


def _check_header(image: Any, field: str, limits: Limits) -> None:
    width, height = image.size
    if image.format not in FORMATS:
        raise _bad(field, f"must be PNG, JPEG or WebP (got {image.format})")
    if width < 1 or height < 1 or width * height > limits.max_input_pixels:
        raise _bad(
            field,
            f"must have at most {limits.max_input_pixels} pixels (it declares "
            f"{width}x{height} = {width * height})",
        )
    if getattr(image, "is_animated", False) or getattr(image, "n_frames", 1) > 1:
        raise _bad(field, "is animated; send a single still image")
    raw_modes = [str(getattr(t, "args", "") or "") for t in (image.tile or [])]
    if image.mode.startswith(("I;16", "I", "F")) or any(";16" in m for m in raw_modes):
        raise _bad(field, f"has 16 bits per channel (mode {image.mode}); send an 8-bit image")


def _normalise(image: Any, keep_alpha: bool) -> Any:
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if keep_alpha and has_alpha:
        return image.convert("RGBA")
    return image.convert("RGB")


def _png_bytes(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)  # no metadata: same pixels, same bytes
    return buf.getvalue()


def write_input(image: Any, inputs_dir: Path) -> StoredInput:
    """Store a normalised image at ``<inputs_dir>/<sha256>.png`` (atomically, durably)."""
    data = _png_bytes(image)
    ref = hashlib.sha256(data).hexdigest()
    inputs_dir = Path(inputs_dir)
    target = inputs_dir / f"{ref}.png"
    if not target.is_file():
        try:
            _write_durably(data, target)
        except OSError as exc:  # a full disk or an unwritable data directory: 507, not 500
            raise StorageError(
                f"cannot store the input image in {inputs_dir}: {exc.strerror or exc}; free "
                "space in the data directory or make it writable"
            ) from exc
    return StoredInput(ref, image.width, image.height)


def _write_durably(data: bytes, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".in-", suffix=".png", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def store_image(
    data: bytes, field: str, limits: Limits, inputs_dir: Path, keep_alpha: bool = False
) -> StoredInput:
    """Check, normalise (RGB, or RGBA with ``keep_alpha``) and store an uploaded image."""
    image = _normalise(open_image(data, field, limits), keep_alpha)
    return write_input(image, inputs_dir)


def mask_from_alpha(image: Any) -> Any:
    """OpenAI's convention: fully transparent pixels mark the region to redo. -> L, 255 = redo."""
    alpha = image.convert("RGBA").getchannel("A")
    return alpha.point(lambda a: 255 if a == 0 else 0)


def store_mask(
    data: bytes,
    field: str,
    limits: Limits,
    inputs_dir: Path,
    size: tuple[int, int] | None,
    from_alpha: bool = False,
) -> StoredInput:
    """Check and store a mask as greyscale, white (255) = redo, black = keep.

    ``from_alpha``: the OpenAI convention (transparent = redo; the PNG must have alpha).
    Otherwise AUTOMATIC1111's: white = redo. ``size``: the image's, which the mask must match.
    """
    image = open_image(data, field, limits)
    if size is not None and image.size != tuple(size):
        raise _bad(
            field,
            f"must be the same size as the image, {size[0]}x{size[1]} "
            f"(got {image.width}x{image.height})",
        )
    if from_alpha:
        if _normalise(image, keep_alpha=True).mode != "RGBA":
            raise _bad(field, "must be a PNG with an alpha channel: transparent pixels = redo")
        mask = mask_from_alpha(image)
    else:
        mask = image.convert("L")
    require_region(mask, field)
    return write_input(mask, inputs_dir)


def require_region(mask: Any, field: str) -> None:
    """A mask must mark something to redo."""
    if mask.getbbox() is None:
        raise _bad(field, "marks no region to redo (every pixel is 'keep')")


def check_ref(ref: Any, field: str, inputs_dir: Path | str | None) -> StoredInput:
    """A reference names a stored input: 64 hex digits, and the file is there."""
    if not isinstance(ref, str) or not REF_RE.match(ref):
        raise _bad(field, f"must be an input id (64 hex digits from POST /v1/inputs), got {ref!r}")
    if inputs_dir is None:
        raise _bad(field, "input images are not available on this server (no data directory)")
    path = Path(inputs_dir) / f"{ref}.png"
    if not path.is_file():
        raise _bad(field, f"no stored input {ref}; upload it with POST /v1/inputs first")
    from PIL import Image

    with Image.open(path) as image:
        return StoredInput(ref, image.width, image.height)


def load_input(inputs_dir: Path, ref: str, mode: str | None = None) -> Any:
    """The stored image for ``ref`` (pixels loaded), for the engine."""
    from PIL import Image

    if not REF_RE.match(ref):
        raise ValueError(f"not an input reference: {ref!r}")
    with Image.open(Path(inputs_dir) / f"{ref}.png") as image:
        image.load()
        return image.convert(mode) if mode else image.copy()
