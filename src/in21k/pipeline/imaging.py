"""One raw member's bytes -> one training JPEG: decode, fix colour and orientation, resize, encode.

``process_image`` never raises for bad data: it returns an ``ImageResult`` whose ``reason`` names why a
member was rejected (``empty``, ``not_an_image``, ``truncated``, ``too_large``, ``decode_error``). Bugs
(``TypeError``, ``NameError``) still raise.

Two paths, one output:

- **Fast path** (JPEGs whose header says YCbCr, RGB or grayscale, when simplejpeg is importable):
  the bomb guard reads the size from the header, before any pixel is decoded; libjpeg-turbo (simplejpeg,
  ``strict``) decodes straight to RGBX at the power-of-two DCT scale of ``dct_scale``; Pillow (pillow-simd
  when installed) maps that buffer without a copy, resizes it with BILINEAR (antialiased: Pillow's
  filter widens with the downscale factor), undoes the EXIF orientation and encodes at ``quality``. The
  orientation comes from a walk over the markers before the first scan: without an APP1 segment there
  is no EXIF or XMP, so the image is upright; with one, Pillow parses the header as the other path does.
- **Pillow path** (everything else: PNG, GIF, BMP, ..., CMYK and YCCK JPEGs, whose Adobe inversion
  Pillow knows, and every JPEG libjpeg-turbo refuses or warns about: ``strict`` turns its warnings, such
  as "premature end of JPEG file", into errors, where it would otherwise fill a truncated image with
  grey): ``Image.draft`` asks libjpeg for the DCT-scaled decode, then the same resize, orientation and
  encoder. Every rejection reason comes from this path (the bomb guard aside, which says ``too_large``
  in both), so a bad file gets today's reason whichever path saw it first.

Where the two paths may differ: nowhere by design. Both decode with libjpeg-turbo's accurate integer
IDCT and smooth ("fancy") chroma upsampling at the same scale (``dct_scale`` is ``Image.draft``'s rule),
then share Pillow's resize and encoder, so on baseline, progressive, 4:4:4, grayscale and EXIF-rotated
JPEGs their outputs are byte-identical; what could still differ is the rounding of two libjpeg-turbo
builds (Pillow's and simplejpeg's). ``tests/pipeline/test_imaging_fast.py`` holds them to a mean
absolute difference of at most 0.5 levels of 255. The encoder is Pillow's, not simplejpeg's
``encode_jpeg``: that one was measured ~10 us faster per 224 px encode (under 1% of an image's cost)
and less exact at quality 95 (it uses the fast DCT whatever its ``fastdct`` says: +1.5% bytes, +0.04
mean error), while Pillow's writes the very bytes the original's ``cv2.imencode`` writes for the same
pixels.

**Images already at the output size** (the processed release's 224 px JPEGs, say) are written byte for byte,
without a second JPEG generation, when they are baseline-coloured JPEGs (YCbCr, what every camera and the
original's script write) with no APP1 segment (no EXIF or XMP: nothing to rotate, no camera metadata carried into
the shards) and libjpeg-turbo decodes them strictly (its warnings are errors), which is the decode check: a
damaged file is never copied. Everything else at size (grayscale, CMYK, PNG, WebP, rotated or tagged JPEGs) goes
the usual way. ``copy_at_size=False`` (``prepare --reencode-at-size``) re-encodes them too. Without simplejpeg,
the Pillow path copies under the same rule, Pillow's full decode being the check.

With ``fingerprint=True`` both paths also take a 64 x 64 thumbnail of the pixels they write
(``in21k.pipeline.fingerprint.thumbnail``; for a copied image, the pixels of its decode check): the same pixels
give the same fingerprints, whichever path ran.

Speed comes from not decoding pixels we throw away, and from not copying them: DCT scaling skips the
inverse DCT, upsampling and colour conversion of the dropped pixels, but not the entropy decoding of
the file, so it helps large images and does nothing for the common 300-500 px ones, whose short side is
below 2x the target; those gain only Pillow's per-image overhead (header parsing in Python, chunked
decoding, the RGB -> RGBX unpacking) that the fast path skips (see docs/benchmarks.md). pillow-simd, when
installed in place of Pillow, speeds up the resize; the code is the same for both. (Keeping JPEGs in
YCbCr from decoder to encoder was measured slower with libjpeg-turbo, so the path stays RGB.)
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image, ImageFile, UnidentifiedImageError

from in21k.pipeline.fingerprint import thumbnail

try:  # libjpeg-turbo without Pillow's per-image overhead; without it every image takes the Pillow path
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - simplejpeg is a runtime dependency
    _simplejpeg = None

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

# Header colour spaces libjpeg-turbo turns into RGB exactly as Pillow does; CMYK and YCCK (Adobe's
# inverted CMYK) stay with Pillow.
_TURBO_COLORSPACES = frozenset({"YCbCr", "Gray", "RGB"})


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
    # With process_image(fingerprint=True): the thumbnail of the written pixels that in21k.pipeline.fingerprint
    # works from (its fingerprints() takes a batch of them, with exact_hash of each jpeg).
    thumbnail: Any = None
    copied: bool = False  # the source bytes themselves: already at the output size, decoded cleanly

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


def dct_scale(src_w: int, src_h: int, want_w: int, want_h: int) -> int:
    """The largest of 8, 4, 2, 1 by which a JPEG can be DCT-scaled and still cover ``want_w`` x ``want_h``.

    The rule of Pillow's ``JpegImageFile.draft`` (``side // want >= scale``), so the fast path decodes
    exactly the pixels the Pillow path does. libjpeg-turbo's output, ``ceil(side / scale)``, would cover
    the target for ``scale - 1`` more sizes per side: a few pixels in thousands, not worth a difference.
    Only powers of two: libjpeg-turbo's other scales (3/4, 5/8, 7/8) were measured slower than a full
    decode (docs/benchmarks.md).
    """
    fits = min(src_w // max(want_w, 1), src_h // max(want_h, 1))
    for scale in (8, 4, 2):
        if fits >= scale:
            return scale
    return 1


def process_image(
    data: bytes,
    *,
    resize: ResizeMode = "squash",
    size: int = 224,
    quality: int = 95,
    max_image_pixels: int = 89_478_485,
    fingerprint: bool = False,
    copy_at_size: bool = True,
) -> ImageResult:
    """Decode ``data``, convert to RGB, apply EXIF orientation, resize and encode as JPEG; a clean JPEG already
    at the output size is copied (module docstring) unless ``copy_at_size`` is false. With ``fingerprint``, also
    the thumbnail of the written pixels that ``in21k.pipeline.fingerprint`` works from."""
    if not data:
        return ImageResult(None, "empty")
    opts = {
        "resize": resize,
        "size": size,
        "quality": quality,
        "max_image_pixels": max_image_pixels,
        "fingerprint": fingerprint,
    }
    if _simplejpeg is not None and data[:2] == b"\xff\xd8":
        try:
            result = _process_turbo(data, **opts, copy_at_size=copy_at_size)
        except (TypeError, NameError):
            raise
        except Exception:  # noqa: BLE001 - libjpeg-turbo refused or warned (ValueError), or ran out of memory:
            result = None  # the Pillow path decides, and names the reason
        if result is not None:
            return result
    return _process_pillow(data, **opts, copy_at_size=copy_at_size and _simplejpeg is None)


def _encoded(img: Image.Image, quality: int, fingerprint: bool, src_w: int, src_h: int) -> ImageResult:
    """The written JPEG of the final pixels (both paths end here), with what their fingerprints need if asked."""
    buf = io.BytesIO()  # Pillow's encoder takes RGBX as it is (why not simplejpeg's: module docstring)
    img.save(buf, format="JPEG", quality=quality)
    jpeg = buf.getvalue()
    result = ImageResult(jpeg, None, src_w, src_h, img.size[0], img.size[1])
    if fingerprint:
        result.thumbnail = thumbnail(img)
    return result


def _copied(data: bytes, img: Image.Image, fingerprint: bool) -> ImageResult:
    """A source JPEG written as it is; ``img`` holds the pixels of its decode check."""
    w, h = img.size
    result = ImageResult(data, None, w, h, w, h, copied=True)
    if fingerprint:
        result.thumbnail = thumbnail(img)
    return result


def _jpeg_orientation(data: bytes) -> int | None:
    """EXIF orientation of a JPEG from its markers before the first scan; None when Pillow must read it.

    Pillow takes EXIF and XMP (its fallback for the orientation) only from APP1 segments before the
    first scan, so a header without one is upright; with one, or with anything unexpected, Pillow's own
    parser answers, and the two paths cannot disagree.
    """
    pos, end = 2, len(data) - 3
    while pos < end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
        elif marker == 0xDA:  # start of scan: the header is over
            return 1
        elif marker == 0xE1 or marker in (0x00, 0xD8, 0xD9):
            return None
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
        else:
            pos += 2 + (data[pos + 2] << 8 | data[pos + 3])
    return None


def _process_turbo(
    data: bytes,
    *,
    resize: ResizeMode,
    size: int,
    quality: int,
    max_image_pixels: int,
    fingerprint: bool,
    copy_at_size: bool = True,
) -> ImageResult | None:
    """The fast path for JPEGs libjpeg-turbo decodes cleanly; None hands the member to the Pillow path."""
    sj = _simplejpeg
    src_h, src_w, colorspace, _ = sj.decode_jpeg_header(data)
    if colorspace not in _TURBO_COLORSPACES or src_w <= 0 or src_h <= 0:
        return None
    if src_w * src_h > max_image_pixels:
        return ImageResult(None, "too_large", src_w, src_h, detail=f"{src_w}x{src_h} px")
    orientation = no_app1 = _jpeg_orientation(data)  # 1 when the header has no APP1 segment (no EXIF/XMP)
    if orientation is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                orientation = _orientation(Image.open(io.BytesIO(data)))
        except (OSError, SyntaxError, EOFError, ValueError):
            return None  # Pillow cannot even read the header: its path names the reason
    swap = orientation in (5, 6, 7, 8)
    up_w, up_h = (src_h, src_w) if swap else (src_w, src_h)
    out_w, out_h = target_size(up_w, up_h, resize=resize, size=size)
    raw_w, raw_h = (out_h, out_w) if swap else (out_w, out_h)  # the target in stored orientation
    if copy_at_size and colorspace == "YCbCr" and no_app1 == 1 and (src_w, src_h) == (raw_w, raw_h):
        # The strict decode is the check: a damaged file raises ValueError, and the Pillow path then decides.
        pixels = sj.decode_jpeg(data, colorspace="RGB", strict=True)
        return _copied(data, Image.frombuffer("RGB", (src_w, src_h), pixels, "raw", "RGB", 0, 1), fingerprint)
    scale = dct_scale(src_w, src_h, raw_w, raw_h) if resize != "none" else 1
    # strict: libjpeg-turbo's warnings (premature end of data, corrupt segments) raise ValueError.
    pixels = sj.decode_jpeg(
        data, colorspace="RGBX", min_height=-(-src_h // scale), min_width=-(-src_w // scale), strict=True
    )
    img = Image.frombuffer("RGBX", (pixels.shape[1], pixels.shape[0]), pixels, "raw", "RGBX", 0, 1)  # no copy
    if img.size != (raw_w, raw_h):
        img = img.resize((raw_w, raw_h), Image.Resampling.BILINEAR)
    if orientation in _ORIENTATION:
        img = img.transpose(_ORIENTATION[orientation])
    return _encoded(img, quality, fingerprint, src_w, src_h)


def _has_app1(img: Image.Image) -> bool:
    return any(marker == "APP1" for marker, _ in getattr(img, "applist", ()))


def _process_pillow(
    data: bytes,
    *,
    resize: ResizeMode,
    size: int,
    quality: int,
    max_image_pixels: int,
    fingerprint: bool,
    copy_at_size: bool = False,
) -> ImageResult:
    """Any format Pillow reads; the source of every rejection reason."""
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
            at_size = (src_w, src_h) == (raw_w, raw_h) and orientation not in _ORIENTATION
            if copy_at_size and at_size and img.format == "JPEG" and img.mode == "RGB" and not _has_app1(img):
                img.load()  # the decode check: a truncated or damaged file raises
                return _copied(data, img, fingerprint)
            if img.format == "JPEG" and resize != "none":
                # DCT-scaled decode (1/2, 1/4, 1/8) to the smallest size still >= the target in both sides.
                img.draft(None, (raw_w, raw_h))
            img.load()
            img = _to_rgb(img)
            if img.size != (raw_w, raw_h):
                img = img.resize((raw_w, raw_h), Image.Resampling.BILINEAR)
            if orientation in _ORIENTATION:
                img = img.transpose(_ORIENTATION[orientation])
            return _encoded(img, quality, fingerprint, src_w, src_h)
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
