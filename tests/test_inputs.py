"""Input images: every kind of bad upload is a 400 naming the field, before any pixel is
decoded when the header already says no; good ones are stored once, by content, durably."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from steadygen.config import Limits
from steadygen.errors import InvalidRequest, StorageError
from steadygen.inputs import (
    check_ref,
    decode_base64,
    load_input,
    store_image,
    store_mask,
)

LIMITS = Limits()


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int, bit_depth: int = 8, colour: int = 2) -> bytes:
    """A PNG that declares a size but carries (almost) no pixel data: a bomb's shape."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(
        b"IEND", b"")


def rgb16_png(side: int = 8) -> bytes:
    rows = b"".join(b"\x00" + b"\x12\x34" * 3 * side for _ in range(side))
    ihdr = struct.pack(">IIBBBBB", side, side, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(
        b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def message(exc: pytest.ExceptionInfo[InvalidRequest]) -> tuple[str, str]:
    err = exc.value.errors[0]
    return err.field, err.message


def test_a_good_image_is_stored_once_by_content(tmp_path: Path) -> None:
    data = png(Image.new("RGB", (40, 30), (10, 200, 30)))
    a = store_image(data, "image", LIMITS, tmp_path)
    b = store_image(data, "image", LIMITS, tmp_path)
    assert a == b and (a.width, a.height) == (40, 30) and len(a.ref) == 64
    assert [p.name for p in tmp_path.iterdir()] == [f"{a.ref}.png"]  # no temp file left
    assert load_input(tmp_path, a.ref).getpixel((0, 0)) == (10, 200, 30)
    assert check_ref(a.ref, "init_image", tmp_path) == a


def test_an_unwritable_inputs_directory_is_a_storage_error(tmp_path: Path) -> None:
    """A data directory that cannot take the image (here: its path is a file) is a
    StorageError, which the API answers 507 naming the directory, not a 500."""
    blocked = tmp_path / "inputs"
    blocked.write_text("not a directory")
    data = png(Image.new("RGB", (40, 30), (10, 200, 30)))
    with pytest.raises(StorageError, match="cannot store the input image in .*inputs"):
        store_image(data, "image", LIMITS, blocked)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"not an image at all", "not an image"),
        (b"", "is empty"),
        (png(Image.new("RGB", (64, 64), 3))[:-40], "truncated"),
        (png_header_only(50_000, 50_000), "at most"),
        (rgb16_png(), "16 bits"),
        (png(Image.new("I;16", (8, 8))), "16 bits"),
    ],
    ids=["bytes", "empty", "truncated", "bomb", "rgb16", "grey16"],
)
def test_bad_images_are_refused_naming_the_field(
    tmp_path: Path, data: bytes, words: str
) -> None:
    with pytest.raises(InvalidRequest) as exc:
        store_image(data, "image", LIMITS, tmp_path)
    field, text = message(exc)
    assert field == "image" and words in text
    assert not list(tmp_path.iterdir())


def test_an_animated_image_is_refused(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:])
    with pytest.raises(InvalidRequest) as exc:
        store_image(buf.getvalue(), "init_images[0]", LIMITS, tmp_path)
    assert message(exc) == ("init_images[0]", "is animated; send a single still image")


def test_a_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    data = png_header_only(50_000, 50_000)
    assert len(data) < 200  # a small file ...
    with pytest.raises(InvalidRequest) as exc:  # ... that claims 2.5 billion pixels
        store_image(data, "image", LIMITS, tmp_path)
    assert "2500000000 pixels" in message(exc)[1]
    with pytest.raises(InvalidRequest) as exc:  # under Pillow's own limit, over ours
        store_image(png_header_only(9000, 9000), "image", LIMITS, tmp_path)
    assert "9000x9000" in message(exc)[1]


def test_masks_white_or_transparent_same_size_and_not_empty(tmp_path: Path) -> None:
    white = Image.new("L", (32, 32), 0)
    white.paste(255, (8, 8, 16, 16))
    stored = store_mask(png(white), "mask", LIMITS, tmp_path, size=(32, 32))
    assert load_input(tmp_path, stored.ref).getbbox() == (8, 8, 16, 16)
    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 4, 4))  # transparent = redo
    alpha = store_mask(png(rgba), "mask", LIMITS, tmp_path, size=(32, 32), from_alpha=True)
    assert load_input(tmp_path, alpha.ref).getbbox() == (0, 0, 4, 4)
    with pytest.raises(InvalidRequest) as exc:
        store_mask(png(white), "mask", LIMITS, tmp_path, size=(64, 32))
    assert "same size as the image, 64x32 (got 32x32)" in message(exc)[1]
    with pytest.raises(InvalidRequest) as exc:
        store_mask(png(Image.new("L", (32, 32), 0)), "mask", LIMITS, tmp_path, size=None)
    assert "no region" in message(exc)[1]
    with pytest.raises(InvalidRequest) as exc:
        store_mask(png(white.convert("RGB")), "mask", LIMITS, tmp_path, size=None,
                   from_alpha=True)
    assert "alpha channel" in message(exc)[1]


def test_references_are_checked(tmp_path: Path) -> None:
    for bad in ("../../etc/passwd", "abc", 5, "A" * 64):
        with pytest.raises(InvalidRequest) as exc:
            check_ref(bad, "init_image", tmp_path)
        assert message(exc)[0] == "init_image"
    with pytest.raises(InvalidRequest, match="no stored input"):
        check_ref("0" * 64, "mask", tmp_path)


def test_base64_and_data_urls(tmp_path: Path) -> None:
    import base64

    data = png(Image.new("RGB", (8, 8)))
    text = base64.b64encode(data).decode()
    assert decode_base64(text, "image") == data
    assert decode_base64("data:image/png;base64," + text, "image") == data
    with pytest.raises(InvalidRequest, match="base64"):
        decode_base64("***", "init_images[0]")
