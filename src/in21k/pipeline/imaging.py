"""One raw member's bytes -> one training JPEG: decode, fix colour and orientation, resize, encode.

``process_image`` never raises for bad data: it returns an ``ImageResult`` whose ``reason`` names why a
member was rejected (``empty``, ``not_an_image``, ``truncated``, ``too_large``, ``decode_error``). Bugs
(``TypeError``, ``NameError``) still raise.

Speed comes from not decoding pixels we throw away: for JPEG sources, ``Image.draft`` asks libjpeg for
a DCT-scaled decode (1/2, 1/4, 1/8) that is still at least the target size in both sides. That skips
the inverse DCT, upsampling and colour conversion of the dropped pixels, but not the entropy decoding
of the file, so it helps large images (about 2x at 8x the target) and does nothing for the common
300-500 px ones (see docs/benchmarks.md). pillow-simd, when installed in place of Pillow, speeds up the
resize; the code is the same for both. (Keeping JPEGs in YCbCr from decoder to encoder was measured
slower with libjpeg-turbo, so the path stays RGB.)
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Literal

from PIL import Image, ImageFile, UnidentifiedImageError

ResizeMode = Literal["squash", "short-edge", "none"]

# The bomb guard is ours (``max_image_pixels``); PIL's global limit is lifted so it cannot disagree.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False

# EXIF orientation -> the transpose that undoes it (the table of ``ImageOps.exif_transpose``).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass
class ImageResult:
    """What became of one member: ``jpeg`` bytes when written, else ``reason``."""

    jpeg: bytes | None
    reason: str | None = None
    src_width: int = 0
    src_height: int = 0
    width: int = 0
    height: int = 0
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.jpeg is not None


def target_size(width: int, height: int, *, resize: ResizeMode, size: int) -> tuple[int, int]:
    """Output size for a source of ``width`` x ``height`` (upright orientation)."""
    if resize == "squash":
        return size, size
    if resize == "short-edge":
        short = min(width, height)
        if short <= size:  # never upscale: it adds bytes, not information
            return width, height
        scale = size / short
        if width <= height:
            return size, max(1, round(height * scale))
        return max(1, round(width * scale)), size
    return width, height


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # a malformed EXIF block only loses the orientation
        return 1


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB (or YCbCr, which JPEG encodes directly); alpha is laid on white."""
    mode = img.mode
    if mode in ("RGB", "YCbCr"):
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        hi = float(arr.max()) if arr.size else 0.0
        # 16-bit sources use the full 0..65535 range; scale by the real maximum only if it exceeds it.
        top = 65535.0 if hi <= 65535.0 and mode != "F" else max(hi, 1e-12)
        if mode == "F" and hi <= 1.0:
            top = 1.0
        arr8 = np.clip(arr * (255.0 / top), 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "P", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK (Adobe inversion handled by the decoder), LAB, HSV


def process_image(
    data: bytes,
    *,
    resize: ResizeMode = "squash",
    size: int = 224,
    quality: int = 95,
    max_image_pixels: int = 89_478_485,
) -> ImageResult:
    """Decode ``data``, convert to RGB, apply EXIF orientation, resize and encode as JPEG."""
    if not data:
        return ImageResult(None, "empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns about odd EXIF/ICC chunks of real web images
            img = Image.open(io.BytesIO(data))
            src_w, src_h = img.size
            if src_w <= 0 or src_h <= 0:
                return ImageResult(None, "decode_error", detail="zero-sized image")
            if src_w * src_h > max_image_pixels:
                return ImageResult(None, "too_large", src_w, src_h, detail=f"{src_w}x{src_h} px")
            orientation = _orientation(img)
            swap = orientation in (5, 6, 7, 8)
            up_w, up_h = (src_h, src_w) if swap else (src_w, src_h)
            out_w, out_h = target_size(up_w, up_h, resize=resize, size=size)
            raw_w, raw_h = (out_h, out_w) if swap else (out_w, out_h)  # the target in stored orientation
            if img.format == "JPEG" and resize != "none":
                # DCT-scaled decode (1/2, 1/4, 1/8) to the smallest size still >= the target in both sides.
                img.draft(None, (raw_w, raw_h))
            img.load()
            img = _to_rgb(img)
            if img.size != (raw_w, raw_h):
                img = img.resize((raw_w, raw_h), Image.Resampling.BILINEAR)
            if orientation in _ORIENTATION:
                img = img.transpose(_ORIENTATION[orientation])
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=quality)
            return ImageResult(buf.getvalue(), None, src_w, src_h, img.size[0], img.size[1])
    except (TypeError, NameError):
        raise
    except UnidentifiedImageError as exc:
        return ImageResult(None, "not_an_image", detail=str(exc)[:200])
    except Image.DecompressionBombError as exc:
        return ImageResult(None, "too_large", detail=str(exc)[:200])
    except (OSError, SyntaxError, EOFError) as exc:
        text = str(exc)
        reason = "truncated" if "truncated" in text or "broken data stream" in text else "decode_error"
        return ImageResult(None, reason, detail=text[:200])
    except Exception as exc:  # noqa: BLE001 - any other decoder failure is bad data, counted and reported
        return ImageResult(None, "decode_error", detail=f"{type(exc).__name__}: {exc}"[:200])


def baseline_process(data: bytes, *, size: int = 224, quality: int = 95) -> bytes:
    """The original's way, for benchmarks: full decode, squash to ``size`` x ``size``, encode.

    The original used cv2 (``INTER_LINEAR``); cv2 is not installed here, so this is PIL's BILINEAR on a
    full-resolution decode. Images smaller than ``size`` were copied unchanged by the original.
    """
    img = Image.open(io.BytesIO(data))
    if img.size[0] < size and img.size[1] < size:
        return data
    img = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
