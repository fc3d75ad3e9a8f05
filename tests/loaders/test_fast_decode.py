"""The libjpeg-turbo decode path (simplejpeg) gives Pillow's pixels, and Pillow takes over where it must."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest

from in21k.loaders import create_loader
from in21k.loaders import transforms as T
from in21k.loaders.transforms import CorruptImageError, build_transform, decode_pixels, decode_rgb, decode_turbo
from tests.loaders.prepared_data import make_prepared_dataset

pytestmark = pytest.mark.skipif(T.simplejpeg is None, reason="simplejpeg is not installed")


def _pixels(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth colour field plus noise: photo-like JPEG content."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(low).resize((width, height), Image.BICUBIC), dtype=np.int16)
    return np.clip(img + rng.integers(-12, 13, size=img.shape), 0, 255).astype(np.uint8)


def _encode(width: int, height: int, *, mode: str = "RGB", fmt: str = "JPEG", seed: int = 0, **kwargs) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_pixels(width, height, seed)).convert(mode).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _pillow(data: bytes, squash_to: int | None = None) -> np.ndarray:
    return np.asarray(decode_rgb(data, squash_to=squash_to))


def _pillow_before_resize(data: bytes, squash_to: int | None) -> np.ndarray:
    """What ``decode_rgb`` has decoded before its resize (at the ``draft`` DCT scale with ``squash_to``)."""
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    if squash_to is not None:
        img.draft("RGB", (squash_to, squash_to))
    return np.asarray(img.convert("RGB"))


def _as_array(img) -> np.ndarray:
    return img if isinstance(img, np.ndarray) else np.asarray(img)


# (stored width, height, encoder options): what the fast path must decode exactly as Pillow does.
JPEGS = {
    "baseline_420": (224, 224, {"quality": 95}),
    "baseline_444": (224, 224, {"quality": 90, "subsampling": 0}),
    "baseline_422": (224, 224, {"quality": 90, "subsampling": 1}),
    "odd_size": (53, 37, {"quality": 80}),
    "progressive": (300, 200, {"quality": 90, "progressive": True}),
    "grayscale": (224, 224, {"quality": 90, "mode": "L"}),
    "large": (1000, 700, {"quality": 85}),
    "large_progressive": (900, 1200, {"quality": 85, "progressive": True}),
    "rgb_colourspace": (64, 80, {"quality": 90, "keep_rgb": True}),  # Adobe transform 0: no YCbCr
}


@pytest.mark.parametrize("name", sorted(JPEGS))
@pytest.mark.parametrize("squash_to", [None, 224, 100, 8])
def test_turbo_decode_equals_pillow(name: str, squash_to: int | None) -> None:
    width, height, opts = JPEGS[name]
    data = _encode(width, height, **opts)
    fast = decode_turbo(data, squash_to=squash_to)
    assert fast is not None, "the fast path must take this JPEG"
    scale = 1 if squash_to is None else T.draft_scale(width, height, squash_to)
    assert fast.shape == (-(-height // scale), -(-width // scale), 3)
    # Bit-identical: the same libjpeg-turbo decoder and settings (islow IDCT, fancy upsampling) as Pillow's,
    # before the resize and after it.
    assert np.array_equal(fast, _pillow_before_resize(data, squash_to))
    assert np.array_equal(_as_array(decode_pixels(data, squash_to=squash_to)), _pillow(data, squash_to))


def test_stored_size_decodes_straight_into_the_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _encode(32, 32, quality=95)
    batch = np.zeros((3, 32, 32, 3), dtype=np.uint8)
    monkeypatch.setattr(T, "decode_rgb", _no_pillow)
    slot = batch[1]
    assert decode_pixels(data, squash_to=32, out=slot) is slot
    build_transform("eval", image_size=32, train=False).into(data, batch[2])
    monkeypatch.undo()
    assert np.array_equal(batch[1], _pillow(data)) and np.array_equal(batch[2], _pillow(data))
    assert not batch[0].any()


def _no_pillow(*args, **kwargs):  # also stands in for write_rgb: the fast path must not need it
    raise AssertionError("the fast path should have decoded this JPEG straight into its slot, without Pillow")


@pytest.mark.parametrize("transform", ["eval", "miil", "timm"])
@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("stored", [(64, 64), (150, 90)])
def test_transforms_equal_with_either_decoder(
    monkeypatch: pytest.MonkeyPatch, transform: str, train: bool, stored: tuple[int, int]
) -> None:
    import torch

    tf = build_transform(transform, image_size=64, train=train)
    data = _encode(*stored, quality=90, seed=3)
    results = []
    for decoder in (T.simplejpeg, None):
        monkeypatch.setattr(T, "simplejpeg", decoder)
        random.seed(7)
        np.random.seed(7)
        torch.manual_seed(7)
        results.append(tf(data))
    assert np.array_equal(results[0], results[1])


@pytest.mark.parametrize("size", [(64, 64), (17, 9), (1, 1), (224, 224)])
def test_cutout_on_array_equals_cutout_on_pil(size: tuple[int, int]) -> None:
    from PIL import Image

    for seed in range(20):
        arr = _pixels(*size, seed=seed)
        pil = T.cutout(Image.fromarray(arr), factor=0.5, rng=random.Random(seed))
        out = T.cutout(arr.copy(), factor=0.5, rng=random.Random(seed))
        assert np.array_equal(out, np.asarray(pil))


def test_cmyk_takes_pillow() -> None:
    data = _encode(64, 48, mode="CMYK", quality=90)
    assert decode_turbo(data) is None  # simplejpeg's own CMYK conversion differs from Pillow's by 1
    tf = build_transform("eval", image_size=64, train=False)
    assert np.array_equal(tf(data), _pillow(data, squash_to=64))


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_other_formats_take_pillow(fmt: str) -> None:
    from PIL import features

    # WebP is an input format (parquet sets from the hubs): the install must decode it, so this fails, not skips.
    assert fmt != "WEBP" or features.check("webp"), "Pillow without WebP: apt-get install libwebp-dev; make install"
    data = _encode(40, 40, fmt=fmt)
    assert decode_turbo(data) is None
    assert np.array_equal(build_transform("eval", image_size=40, train=False)(data), _pillow(data, squash_to=40))


@pytest.mark.parametrize("cut", ["third", "no_end_marker"])
@pytest.mark.parametrize("fast", [True, False])
def test_truncated_jpeg_is_corrupt_in_both_paths(monkeypatch: pytest.MonkeyPatch, cut: str, fast: bool) -> None:
    data = _encode(224, 224, quality=95)
    data = data[: len(data) // 3] if cut == "third" else data[:-2]
    if not fast:
        monkeypatch.setattr(T, "simplejpeg", None)
    assert decode_turbo(data) is None  # libjpeg only warns ("Premature end"): strict mode refuses it
    with pytest.raises(CorruptImageError):
        build_transform("eval", image_size=224, train=False)(data)


def test_warning_level_damage_keeps_pillows_verdict() -> None:
    """Bytes libjpeg decodes with a warning: the fast path refuses them, Pillow decodes them as it always did."""
    data = bytearray(_encode(224, 224, quality=95))
    data[len(data) // 2 : len(data) // 2 + 200] = b"\x00" * 200
    data = bytes(data)
    assert decode_turbo(data) is None
    out = build_transform("eval", image_size=224, train=False)(data)
    assert np.array_equal(out, _pillow(data, squash_to=224))


def test_not_an_image_is_corrupt() -> None:
    for data in (b"", b"\xff\xd8\xff", b"not an image at all"):
        assert decode_turbo(data) is None
        with pytest.raises(CorruptImageError):
            build_transform("eval", image_size=16, train=False)(data)


def test_fallback_when_simplejpeg_is_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _encode(48, 48, quality=90)
    calls = []
    real = T.decode_rgb
    monkeypatch.setattr(T, "decode_rgb", lambda *a, **k: calls.append(1) or real(*a, **k))
    tf = build_transform("eval", image_size=48, train=False)
    fast = tf(data)
    assert calls == []
    monkeypatch.setattr(T, "simplejpeg", None)
    assert decode_turbo(data) is None
    slow = tf(data)
    assert calls == [1] and np.array_equal(fast, slow)


def _batches(root: Path, image_size: int, workers: int) -> list[tuple[np.ndarray, np.ndarray]]:
    loader = create_loader(
        data=str(root),
        split="train",
        batch_size=4,
        num_workers=workers,
        image_size=image_size,
        transform="eval",
        train=True,
        seed=3,
    )
    return [(images.numpy().copy(), labels.numpy().copy()) for images, labels in loader]


@pytest.mark.slow
@pytest.mark.parametrize("stored,image_size", [(32, 32), ((72, 40), 16)])
def test_loader_batches_equal_with_either_decoder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stored, image_size: int
) -> None:
    """``eval`` batches: the fast path (straight into the slot, or DCT-scaled + resize) equals the Pillow path."""
    root = make_prepared_dataset(
        tmp_path / "data",
        num_classes=3,
        shard_lengths_train=[6, 5, 7, 6],
        shard_lengths_val=[2, 2],
        image_size=stored,
        seed=11,
    )
    # The workers fork after this: they must not decode with Pillow and, at the stored size, must decode
    # straight into the batch slot (nothing is written into it afterwards).
    monkeypatch.setattr(T, "decode_rgb", _no_pillow)
    if stored == image_size:
        monkeypatch.setattr(T, "write_rgb", _no_pillow)
    fast = _batches(root, image_size, workers=2)
    monkeypatch.undo()
    monkeypatch.setattr(T, "simplejpeg", None)
    slow = _batches(root, image_size, workers=2)
    assert len(fast) == len(slow) > 0
    for (a_img, a_lab), (b_img, b_lab) in zip(fast, slow, strict=True):
        assert np.array_equal(a_lab, b_lab) and np.array_equal(a_img, b_img)
