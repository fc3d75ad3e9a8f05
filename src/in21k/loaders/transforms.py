"""Per-sample image work in the loader workers: JPEG decode, then a transform chosen by name.

Everything here ends in a ``uint8`` HWC array; conversion to float and mean/std normalisation happen
on the device in the trainer (docs/design.md, "Where the time goes": float conversion and 4x larger
worker-to-main copies are what made the original's data path slow). The transforms:

``miil`` (the original recipe, train): squash to ``image_size`` x ``image_size`` (aspect ratio
ignored), Cutout (one square of half the image side, random centre, clipped at the border, filled
with a random colour, as the original ``CutoutPIL(cutout_factor=0.5)``), then RandAugment (2 ops,
magnitude 9). The original imported a ``RandAugment`` whose exact op list is not pinned; we use
torchvision's ``RandAugment(num_ops=2, magnitude=9)``. No normalisation: mean (0, 0, 0), std (1, 1, 1).

``timm`` (train): timm's ``create_transform(is_training=True, ...)`` preset (``timm_args`` are passed
through, default ``auto_augment="rand-m9-mstd0.5-inc1"``), with ``ToTensor``/``Normalize``/
``RandomErasing`` stripped: mean/std go to the trainer, and random erasing works on normalised floats,
so it belongs on the device.

``eval`` / non-training: ``miil`` and ``eval`` squash to ``image_size``; ``timm`` uses timm's eval preset
(resize the short side to ``image_size / crop_pct``, centre crop).

Decoding: JPEGs are decoded by libjpeg-turbo through simplejpeg, straight into the output buffer (the
batch slot) when the stored image already has the output size, which is the case for data written by
``in21k prepare``: no PIL image, no copy. The pixels are exactly Pillow's (the same library and settings:
accurate integer IDCT, fancy upsampling; the tests check it), so the two decoders are interchangeable.
For the squash recipes a large image is decoded at the 1/2, 1/4 or 1/8 DCT scale Pillow's ``Image.draft``
would pick, then resized with Pillow. Transforms with PIL steps (RandAugment, timm's presets) get a PIL
image made from the decoded array; Cutout works on the array. Pillow decodes whatever simplejpeg is not
sure to decode exactly as Pillow would (simplejpeg missing, not a JPEG, CMYK/YCCK, anything libjpeg
warns about, e.g. truncated or corrupt data), and Pillow decides whether the bytes are corrupt.
"""

from __future__ import annotations

import functools
import io
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from in21k.errors import ConfigError, DataError
from in21k.loaders.options import TRANSFORMS

try:  # libjpeg-turbo decoding into a given buffer; without it Pillow decodes everything (the same pixels, slower)
    import simplejpeg
except ImportError:  # pragma: no cover - depends on the installation
    simplejpeg = None

MIIL_MEAN = (0.0, 0.0, 0.0)
MIIL_STD = (1.0, 1.0, 1.0)
_STRIPPED = ("ToTensor", "MaybeToTensor", "Normalize", "RandomErasing", "ToNumpy", "MaybePILToTensor", "PILToTensor")


class CorruptImageError(DataError):
    """The bytes of a sample do not decode to an image."""


def decode_rgb(data: bytes, *, squash_to: int | None = None):
    """Decode JPEG (or any Pillow-readable) bytes to an RGB ``PIL.Image``.

    With ``squash_to``, the result is exactly ``squash_to`` x ``squash_to``: decoded at a reduced DCT
    scale where that still leaves at least the target size, then resized only when not already there.
    """
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        if squash_to is not None and img.format == "JPEG":
            img.draft("RGB", (squash_to, squash_to))
        img = img.convert("RGB")  # forces the full decode: a truncated file raises here
    except Image.UnidentifiedImageError:
        # (Pillow's own message names the in-memory buffer, "<_io.BytesIO object at 0x...>", not the file.)
        head = data[:8].hex(" ") if data else "empty"
        raise CorruptImageError(
            f"cannot decode image: not in an image format Pillow reads ({len(data):,} bytes, starting {head})"
        ) from None
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError...) for bad bytes
        raise CorruptImageError(f"cannot decode image: {type(exc).__name__}: {exc}") from None
    if squash_to is not None and img.size != (squash_to, squash_to):
        img = img.resize((squash_to, squash_to), Image.BILINEAR)
    return img


def draft_scale(width: int, height: int, target: int) -> int:
    """The DCT scale ``Image.draft("RGB", (target, target))`` picks: the largest of 8, 4, 2 that still leaves
    at least ``target`` pixels on both sides, else 1."""
    scale = min(width // target, height // target)
    return next((s for s in (8, 4, 2) if scale >= s), 1)


def decode_turbo(data: bytes, *, squash_to: int | None = None, out: np.ndarray | None = None) -> np.ndarray | None:
    """Decode a JPEG with libjpeg-turbo (simplejpeg) to the RGB pixels ``decode_rgb`` gets before its resize.

    With ``squash_to``, at the DCT scale Pillow's ``draft`` picks. Written into ``out`` (C-contiguous uint8)
    when the decoded image has its shape, else into a new array. ``None`` wherever the result could differ
    from Pillow's, or Pillow could reject the bytes: simplejpeg missing, not a JPEG, CMYK or YCCK (Pillow
    converts those itself), more pixels than Pillow's decompression-bomb limit, a multi-picture file that
    would need a scaled decode (Pillow does not draft those), and anything libjpeg reports, warnings
    included (truncated or corrupt data). The caller then decodes with Pillow, which decides.
    """
    if simplejpeg is None or data[:3] != b"\xff\xd8\xff":  # Pillow's own JPEG test
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colorspace not in ("YCbCr", "Gray", "RGB"):
        return None
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is not None and width * height > Image.MAX_IMAGE_PIXELS:
        return None  # Pillow warns or raises DecompressionBombError: keep its behaviour
    scale = 1 if squash_to is None else draft_scale(width, height, squash_to)
    shape = (-(-height // scale), -(-width // scale), 3)
    if scale > 1 and data.find(b"MPF\x00", 0, 1 << 17) >= 0:
        return None  # an MPO file: Pillow decodes it at full size
    buffer = out if out is not None and out.shape == shape and out.flags.c_contiguous else None
    # min_height/min_width make simplejpeg pick scale 1/scale: the smallest libjpeg-turbo factor (in eighths)
    # that still gives this shape; anything smaller loses at least 2 pixels on a side at these sizes.
    mins = {"min_height": shape[0], "min_width": shape[1]} if scale > 1 else {}
    try:
        arr = simplejpeg.decode_jpeg(
            data, colorspace="RGB", fastdct=False, fastupsample=False, buffer=buffer, strict=True, **mins
        )
    except ValueError:
        return None
    if arr.shape != shape:
        return None
    if buffer is not None and arr.__array_interface__["data"][0] == buffer.__array_interface__["data"][0]:
        return buffer  # simplejpeg returns a new view of the buffer: hand back ``out`` itself, so nothing copies it
    return arr


def decode_pixels(data: bytes, *, squash_to: int | None = None, out: np.ndarray | None = None):
    """The RGB pixels of ``data`` as ``decode_rgb`` would give them: a uint8 HWC array (``out`` itself when
    decoded straight into it) from the libjpeg-turbo path, or a ``PIL.Image`` from Pillow or after a resize."""
    arr = decode_turbo(data, squash_to=squash_to, out=out)
    if arr is None:
        return decode_rgb(data, squash_to=squash_to)
    if squash_to is not None and arr.shape[:2] != (squash_to, squash_to):
        from PIL import Image

        return Image.fromarray(arr).resize((squash_to, squash_to), Image.BILINEAR)
    return arr


def cutout(img, *, factor: float = 0.5, rng: random.Random | None = None):
    """The original ``CutoutPIL``: a filled square (side ``factor`` x the image side) at a random centre.

    ``img`` is an RGB ``PIL.Image`` or a uint8 HWC array (filled in place); both give the same pixels for the
    same random draws."""
    rng = rng or random
    is_array = isinstance(img, np.ndarray)
    h, w = img.shape[:2] if is_array else img.size[::-1]
    cut_h, cut_w = int(factor * h + 0.5), int(factor * w + 0.5)
    yc, xc = rng.randrange(h), rng.randrange(w)
    y1, y2 = max(0, yc - cut_h // 2), min(h, yc + cut_h // 2)
    x1, x2 = max(0, xc - cut_w // 2), min(w, xc + cut_w // 2)
    colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    if is_array:
        img[y1 : y2 + 1, x1 : x2 + 1] = colour  # ImageDraw's rectangle includes both corners
        return img
    from PIL import ImageDraw

    ImageDraw.Draw(img).rectangle([x1, y1, x2, y2], fill=colour)
    return img


def _raw_rgb_encoder() -> Callable[[Any, int], bytes] | None:
    """Pillow's raw RGB packer called once for a whole image (``tobytes`` packs in 64 KiB pieces and joins
    them: one copy more); ``None`` where this Pillow lacks the internals, then ``np.asarray`` is used."""
    try:
        from PIL import Image

        getencoder = Image._getencoder  # private, but stable since Pillow 2; tobytes uses it the same way
    except (ImportError, AttributeError):  # pragma: no cover - a Pillow without it
        return None

    def pack(img: Any, nbytes: int) -> bytes:
        encoder = getencoder("RGB", "raw", ("RGB",))
        encoder.setimage(img.im)
        _, errcode, data = encoder.encode(nbytes)
        if errcode != 1 or len(data) != nbytes:  # 1: finished in this one call
            raise RuntimeError(f"raw encoder returned {len(data)} of {nbytes} bytes (error {errcode})")
        return data

    return pack


_PACK_RGB = _raw_rgb_encoder()


def write_rgb(img: Any, out: np.ndarray, *, what: str = "image") -> None:
    """Write an RGB ``PIL.Image`` (or an HWC uint8 array) of ``out``'s shape into ``out``."""
    h, w = out.shape[:2]
    if _PACK_RGB is not None and getattr(img, "mode", None) == "RGB" and getattr(img, "size", None) == (w, h):
        img.load()
        memoryview(out).cast("B")[:] = _PACK_RGB(img, out.nbytes)
        return
    arr = np.asarray(img)
    if arr.shape != out.shape:
        raise RuntimeError(f"{what} produced shape {arr.shape}, expected {tuple(out.shape)}")
    out[...] = arr


def jpeg_looks_complete(data: bytes) -> bool:
    """Cheap check used when decoding is left to the GPU: JPEG start marker and an end marker near the end."""
    return len(data) > 4 and data[:2] == b"\xff\xd8" and b"\xff\xd9" in data[-1024:]


@dataclass
class ImageTransform:
    """Bytes -> uint8 HWC array of ``size``; ``mean``/``std`` (0..1 scale) are for the trainer to apply."""

    name: str
    train: bool
    image_size: int
    mean: tuple[float, float, float] = MIIL_MEAN
    std: tuple[float, float, float] = MIIL_STD
    squash: bool = True
    steps: list[Callable[[Any], Any]] = field(default_factory=list)
    # Run before ``steps``; each takes an RGB PIL image or a uint8 HWC array and returns the same kind.
    array_steps: list[Callable[[Any], Any]] = field(default_factory=list)

    def __call__(self, data: bytes) -> np.ndarray:
        out = np.empty(self.output_shape, dtype=np.uint8)
        self.into(data, out)
        return out

    def into(self, data: bytes, out: np.ndarray) -> None:
        """Decode and transform ``data``, writing the uint8 HWC result into ``out`` (a C-contiguous view,
        e.g. one image of a batch buffer): the loader's per-sample work. A JPEG stored at the output size
        with no PIL steps is decoded straight into ``out``, with no intermediate image."""
        img = decode_pixels(data, squash_to=self.image_size if self.squash else None, out=out)
        for step in self.array_steps:
            img = step(img)
        if self.steps:
            if isinstance(img, np.ndarray):
                from PIL import Image

                img = Image.fromarray(img)  # a copy: ``out`` may be the array, and is written again below
            for step in self.steps:
                img = step(img)
        if img is not out:
            write_rgb(img, out, what=f"transform {self.name!r}")

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, 3)


def build_transform(
    name: str, *, image_size: int, train: bool, timm_args: dict[str, Any] | None = None
) -> ImageTransform:
    """The named transform (``miil``, ``timm`` or ``eval``) for training or evaluation."""
    if name not in TRANSFORMS:
        raise ConfigError(f"unknown transform {name!r}; choose one of {', '.join(TRANSFORMS)}")
    if image_size < 8:
        raise ConfigError(f"image_size must be at least 8, got {image_size}")
    if name == "timm":
        return _timm_transform(image_size=image_size, train=train, timm_args=timm_args)
    if name == "miil" and train:
        from torchvision.transforms import RandAugment

        return ImageTransform(
            "miil",
            True,
            image_size,
            array_steps=[functools.partial(cutout, factor=0.5)],
            steps=[RandAugment(num_ops=2, magnitude=9)],
        )
    return ImageTransform("eval" if name == "eval" else "miil", False, image_size)


def _timm_transform(*, image_size: int, train: bool, timm_args: dict[str, Any] | None) -> ImageTransform:
    from timm.data import create_transform
    from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    args = dict(timm_args or {})
    if train:
        args.setdefault("auto_augment", "rand-m9-mstd0.5-inc1")
    args.setdefault("interpolation", "bilinear")
    mean = tuple(float(v) for v in args.pop("mean", IMAGENET_DEFAULT_MEAN))
    std = tuple(float(v) for v in args.pop("std", IMAGENET_DEFAULT_STD))
    composed = create_transform(input_size=image_size, is_training=train, mean=mean, std=std, **args)
    steps = [t for t in getattr(composed, "transforms", [composed]) if type(t).__name__ not in _STRIPPED]
    return ImageTransform("timm", train, image_size, mean=mean, std=std, squash=False, steps=steps)  # type: ignore[arg-type]
