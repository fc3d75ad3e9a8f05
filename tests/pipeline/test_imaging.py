"""``process_image`` on real image bytes of every awkward kind the release holds."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from in21k.pipeline.imaging import process_image, target_size


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def scene(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    return small.resize((w, h), Image.BILINEAR)


def decoded(result) -> Image.Image:
    assert result.ok, result
    img = Image.open(io.BytesIO(result.jpeg))
    assert img.format == "JPEG" and img.mode == "RGB"
    assert img.size == (result.width, result.height)
    return img


@pytest.mark.parametrize(
    "mode,fmt",
    [
        ("RGB", "JPEG"),
        ("L", "JPEG"),
        ("CMYK", "JPEG"),
        ("P", "PNG"),
        ("RGBA", "PNG"),
        ("LA", "PNG"),
        ("1", "PNG"),
        ("I;16", "PNG"),
        ("P", "GIF"),
        ("RGB", "BMP"),
    ],
)
def test_every_colour_mode_becomes_rgb(mode: str, fmt: str) -> None:
    img = scene(320, 240)
    if mode == "I;16":
        arr = (np.asarray(img.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        src = Image.fromarray(arr, "I;16")
    else:
        src = img.convert(mode)
    r = process_image(encode(src, fmt))
    out = decoded(r)
    assert (r.src_width, r.src_height) == (320, 240) and out.size == (224, 224)
    if mode == "I;16":  # 16-bit scaled to 8-bit, not clipped to white
        assert 20 < np.asarray(out).mean() < 235


def test_alpha_is_laid_on_white() -> None:
    rgba = Image.new("RGBA", (300, 300), (255, 0, 0, 0))  # fully transparent red
    out = decoded(process_image(encode(rgba, "PNG")))
    assert np.asarray(out).min() > 245


def test_exif_orientation_is_applied() -> None:
    stored = scene(400, 260)  # stored landscape, EXIF says rotate: the upright image is portrait
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, exif=exif.tobytes())
    r = process_image(data, resize="short-edge", size=130)
    out = decoded(r)
    assert out.size == (130, 200)
    plain = decoded(process_image(encode(stored), resize="short-edge", size=130))
    assert plain.size == (200, 130)
    # The upright image's top-left pixel is the stored image's bottom-left one (rotate 270 = 90 clockwise).
    assert np.abs(np.asarray(out, dtype=int)[2, 2] - np.asarray(plain, dtype=int)[-3, 2]).max() < 40


def test_resize_modes() -> None:
    data = encode(scene(900, 600))
    assert decoded(process_image(data)).size == (224, 224)
    assert decoded(process_image(data, resize="short-edge", size=224)).size == (336, 224)
    assert decoded(process_image(data, resize="none")).size == (900, 600)
    small = encode(scene(150, 100))
    assert decoded(process_image(small, resize="short-edge", size=224)).size == (150, 100)  # never upscaled
    assert decoded(process_image(small, resize="squash", size=224)).size == (224, 224)
    assert target_size(1000, 500, resize="short-edge", size=100) == (200, 100)


def test_draft_decode_keeps_the_picture() -> None:
    big = scene(2400, 1800, seed=5)
    fast = np.asarray(decoded(process_image(encode(big, quality=95))), dtype=float)
    reference = np.asarray(big.resize((224, 224), Image.BILINEAR), dtype=float)
    assert np.abs(fast - reference).mean() < 4.0


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty"),
        (b"<html>404 Not Found</html>", "not_an_image"),
        (encode(scene(300, 200))[:900], "truncated"),
    ],
)
def test_bad_members_are_rejected_not_raised(data: bytes, reason: str) -> None:
    r = process_image(data)
    assert not r.ok and r.reason == reason and r.jpeg is None


def test_bomb_guard() -> None:
    data = encode(scene(1200, 1000))
    r = process_image(data, max_image_pixels=1_000_000)
    assert not r.ok and r.reason == "too_large" and (r.src_width, r.src_height) == (1200, 1000)
    assert process_image(data, max_image_pixels=1_200_000).ok


def test_quality_is_applied() -> None:
    data = encode(scene(500, 400))
    assert len(process_image(data, quality=95).jpeg) > len(process_image(data, quality=40).jpeg)
