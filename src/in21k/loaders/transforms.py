"""Per-sample image work in the loader workers: JPEG decode, then a transform chosen by name.

Everything here ends in a ``uint8`` HWC array; conversion to float and mean/std normalisation happen
on the device in the trainer (DESIGN "Performance facts": float conversion and 4x larger worker-to-main
copies are what made the original's data path slow). The transforms:

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

Decoding: ``Image.draft`` lets libjpeg decode a large image at 1/2, 1/4 or 1/8 scale when the result is
still at least the target size (for the squash recipes), and no resize happens when the stored image
already has the target size, which is the case for data written by ``in21k prepare``.
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
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError...) for bad bytes
        raise CorruptImageError(f"cannot decode image: {type(exc).__name__}: {exc}") from None
    if squash_to is not None and img.size != (squash_to, squash_to):
        img = img.resize((squash_to, squash_to), Image.BILINEAR)
    return img


def cutout(img, *, factor: float = 0.5, rng: random.Random | None = None):
    """The original ``CutoutPIL``: a filled square (side ``factor`` x the image side) at a random centre."""
    from PIL import ImageDraw

    rng = rng or random
    w, h = img.size
    cut_h, cut_w = int(factor * h + 0.5), int(factor * w + 0.5)
    yc, xc = rng.randrange(h), rng.randrange(w)
    y1, y2 = max(0, yc - cut_h // 2), min(h, yc + cut_h // 2)
    x1, x2 = max(0, xc - cut_w // 2), min(w, xc + cut_w // 2)
    colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
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

    def __call__(self, data: bytes) -> np.ndarray:
        out = np.empty(self.output_shape, dtype=np.uint8)
        self.into(data, out)
        return out

    def into(self, data: bytes, out: np.ndarray) -> None:
        """Decode and transform ``data``, writing the uint8 HWC result into ``out`` (a C-contiguous view,
        e.g. one image of a batch buffer): the loader's per-sample work, with no intermediate array."""
        img = decode_rgb(data, squash_to=self.image_size if self.squash else None)
        for step in self.steps:
            img = step(img)
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
            "miil", True, image_size, steps=[functools.partial(cutout, factor=0.5), RandAugment(num_ops=2, magnitude=9)]
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
