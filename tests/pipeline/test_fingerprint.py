"""Fingerprints: copies of a picture stay within the thresholds, other pictures of its class do not.

The copies are made by the same transforms as ``in21k synth --plant`` (``in21k.synth.planted.transform``), from
real drawn images of the synthetic release, through prepare's own image step (``process_image``)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from in21k.pipeline.dedup import MAX_COLOR_DISTANCE, MAX_DISTANCE
from in21k.pipeline.fingerprint import TRIM_MAX, color_distance, exact_hash, fingerprints, trim_box
from in21k.pipeline.imaging import process_image
from in21k.synth import drawing_paths, render
from in21k.synth.planted import PLANT_KINDS, transform

CLASS = ["n00015388", "n01471682", "n01503061"]  # a root-first chain of the fall11 tree (animal > vertebrate > bird)


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def pictures() -> list[bytes]:
    paths = drawing_paths(CLASS)
    rng = np.random.default_rng(4)
    return [
        _jpeg(render(paths[CLASS[-1]], (int(rng.integers(300, 480)), int(rng.integers(280, 400))), rng))
        for _ in range(12)
    ]


def _fp(datas: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    results = [process_image(d, fingerprint=True) for d in datas]
    assert all(r.ok for r in results)
    return fingerprints([r.thumbnail for r in results])


@pytest.mark.parametrize("kind", PLANT_KINDS)
def test_copies_match_their_original(kind: str, pictures: list[bytes]) -> None:
    rng = np.random.default_rng(PLANT_KINDS.index(kind))
    copies = [transform(p, kind, rng)[0] for p in pictures]
    (h, c), (hc, cc) = _fp(pictures), _fp(copies)
    distance = np.bitwise_count(h ^ hc)
    colours = color_distance(c, cc)
    limit = {"exact": 0, "reencode": 2, "rescale": 2, "colour": 4}.get(kind, MAX_DISTANCE)
    assert distance.max() <= limit, (kind, distance)
    assert colours.max() <= MAX_COLOR_DISTANCE, (kind, colours)


def test_other_pictures_of_a_class_are_not_copies(pictures: list[bytes]) -> None:
    h, c = _fp(pictures)
    i, j = np.triu_indices(len(h), 1)
    same = (np.bitwise_count(h[i] ^ h[j]) <= MAX_DISTANCE) & (color_distance(c[i], c[j]) <= MAX_COLOR_DISTANCE)
    assert not same.any()
    assert (np.bitwise_count(h) == 32).all()  # every hash is above its median in 32 of 64 coefficients


def test_a_frame_is_trimmed_and_a_flat_image_is_not() -> None:
    rng = np.random.default_rng(0)
    thumb = np.full((64, 64, 3), 250, np.uint8)  # white frame
    thumb[5:60, 3:61] = rng.integers(0, 200, (55, 58, 3))
    assert trim_box(thumb) == (3, 5, 61, 60)
    assert trim_box(np.full((64, 64, 3), 90, np.uint8)) == (0, 0, 64, 64)
    half = np.full((64, 64, 3), 30, np.uint8)
    half[:, 40:] = rng.integers(0, 255, (64, 24, 3))
    assert trim_box(half)[0] == TRIM_MAX  # at most a third of a side goes


def test_exact_hash_is_of_the_pixels_not_the_file() -> None:
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    plain = _jpeg(img)
    exif = Image.Exif()
    exif[0x010E] = "the same picture with a description"  # ImageDescription: other bytes, same pixels
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, exif=exif.tobytes())
    assert buf.getvalue() != plain
    a, b = process_image(plain), process_image(buf.getvalue())
    assert exact_hash(a.jpeg) == exact_hash(b.jpeg)
    assert exact_hash(a.jpeg) != exact_hash(process_image(_jpeg(img, quality=80)).jpeg)
