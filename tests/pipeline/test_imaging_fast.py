"""The libjpeg-turbo fast path of ``process_image`` against its Pillow path, on the same bytes.

The Pillow path is what ``process_image`` does when simplejpeg cannot be imported (``_simplejpeg`` is
None), so these tests set that attribute to None to get it. A spy around the real simplejpeg module
shows which path ran.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from in21k.pipeline import imaging
from in21k.pipeline.fingerprint import exact_hash, fingerprints
from in21k.pipeline.imaging import dct_scale, process_image

simplejpeg = pytest.importorskip("simplejpeg")

# The documented bound (module docstring of in21k.pipeline.imaging): mean absolute difference in 8-bit
# levels between the two paths' outputs. Both decode with libjpeg-turbo's accurate IDCT and smooth
# upsampling at the same DCT scale and share Pillow's resize and encoder, so it is 0 on these inputs.
MAX_MEAN_ABS_DIFF = 0.5


class SpyJpeg:
    """The real simplejpeg module, counting the decodes it was asked for."""

    def __init__(self) -> None:
        self.headers = 0
        self.decodes = 0
        self.scales: list[tuple[int, int]] = []

    def decode_jpeg_header(self, data, *args, **kwargs):
        self.headers += 1
        return simplejpeg.decode_jpeg_header(data, *args, **kwargs)

    def decode_jpeg(self, data, *args, **kwargs):
        self.decodes += 1
        out = simplejpeg.decode_jpeg(data, *args, **kwargs)
        self.scales.append(out.shape[:2])
        return out


@pytest.fixture
def spy(monkeypatch) -> SpyJpeg:
    s = SpyJpeg()
    monkeypatch.setattr(imaging, "_simplejpeg", s)
    return s


def pillow_path(monkeypatch, data: bytes, **kw) -> imaging.ImageResult:
    with monkeypatch.context() as m:
        m.setattr(imaging, "_simplejpeg", None)  # as when ``import simplejpeg`` fails
        return process_image(data, **kw)


def scene(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BILINEAR)
    noisy = np.asarray(small, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def encode(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def exif_jpeg(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, exif=exif.tobytes())


def pixels(result: imaging.ImageResult) -> np.ndarray:
    assert result.ok, result
    img = Image.open(io.BytesIO(result.jpeg))
    assert img.format == "JPEG" and img.mode == "RGB" and img.size == (result.width, result.height)
    return np.asarray(img, dtype=np.float64)


XMP6 = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
)

FAST_INPUTS = {
    "baseline": lambda: encode(scene(450, 340)),
    "baseline_444": lambda: encode(scene(450, 340), subsampling=0),
    "progressive": lambda: encode(scene(450, 340), progressive=True),
    "grayscale": lambda: encode(scene(450, 340).convert("L")),
    "dct_scaled_1_4": lambda: encode(scene(2400, 1800, seed=5), quality=95),
    "dct_scaled_1_2_progressive": lambda: encode(scene(1000, 899, seed=6), progressive=True),
    "exif_rotate_270": lambda: exif_jpeg(scene(400, 260), 6),
    "exif_rotate_180": lambda: exif_jpeg(scene(400, 260), 3),
    "exif_transverse": lambda: exif_jpeg(scene(1200, 700, seed=2), 7),
    "xmp_orientation": lambda: encode(scene(400, 260), xmp=XMP6),
}


@pytest.mark.parametrize("resize", ["squash", "short-edge", "none"])
@pytest.mark.parametrize("kind", sorted(FAST_INPUTS))
def test_fast_path_matches_pillow_path(kind: str, resize: str, spy: SpyJpeg, monkeypatch) -> None:
    data = FAST_INPUTS[kind]()
    fast = process_image(data, resize=resize, size=224, fingerprint=True)
    assert spy.decodes == 1, "the fast path did not decode this JPEG"
    slow = pillow_path(monkeypatch, data, resize=resize, size=224, fingerprint=True)
    # The same image gives the same fingerprints, whichever path decoded it (the duplicate finder relies on it).
    (fast_hash, slow_hash), colors = fingerprints([fast.thumbnail, slow.thumbnail])
    assert fast_hash == slow_hash and (colors[0] == colors[1]).all()
    assert exact_hash(fast.jpeg) == exact_hash(slow.jpeg)
    assert (fast.src_width, fast.src_height, fast.width, fast.height) == (
        slow.src_width,
        slow.src_height,
        slow.width,
        slow.height,
    )
    assert np.abs(pixels(fast) - pixels(slow)).mean() <= MAX_MEAN_ABS_DIFF


def test_fast_path_decodes_at_the_dct_scale(spy: SpyJpeg) -> None:
    assert process_image(encode(scene(2400, 1800, seed=5))).ok
    assert spy.scales == [(225, 300)]  # 1/8: min(2400 // 224, 1800 // 224) = 8
    spy.scales.clear()
    assert process_image(encode(scene(450, 340))).ok
    assert spy.scales == [(340, 450)]  # short side under 2 x 224: full decode


@pytest.mark.parametrize(
    "size,want",
    [
        ((447, 460), (224, 224)),
        ((448, 448), (224, 224)),
        ((1791, 1800), (224, 224)),
        ((3584, 2000), (224, 224)),
        ((1000, 999), (224, 224)),
        ((640, 480), (320, 240)),
        ((100, 80), (224, 224)),
        ((900, 600), (900, 600)),
    ],
)
def test_dct_scale_is_pillows_draft_rule(size: tuple[int, int], want: tuple[int, int]) -> None:
    img = Image.open(io.BytesIO(encode(Image.new("RGB", size, (90, 120, 30)))))
    img.draft(None, want)
    scale = dct_scale(*size, *want)
    assert img.size == (-(-size[0] // scale), -(-size[1] // scale))


def test_cmyk_goes_to_the_pillow_path(spy: SpyJpeg, monkeypatch) -> None:
    data = encode(scene(320, 240).convert("CMYK"))
    r = process_image(data)
    assert spy.headers == 1 and spy.decodes == 0
    assert r.jpeg == pillow_path(monkeypatch, data).jpeg
    assert pixels(r).shape == (224, 224, 3)


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP"])
def test_other_formats_never_reach_libjpeg_turbo(fmt: str, spy: SpyJpeg) -> None:
    buf = io.BytesIO()
    scene(300, 200).save(buf, format=fmt)
    assert process_image(buf.getvalue()).ok
    assert spy.headers == 0 and spy.decodes == 0


@pytest.mark.parametrize("progressive", [False, True])
def test_truncated_jpegs_are_rejected_by_both_paths_alike(progressive: bool, monkeypatch) -> None:
    data = encode(scene(450, 340), progressive=progressive)
    cuts = [*range(0, 700, 7), *range(700, len(data), 211), len(data) - 2, len(data) - 1]
    reasons = set()
    for cut in cuts:
        fast = process_image(data[:cut])
        slow = pillow_path(monkeypatch, data[:cut])
        assert (fast.reason, fast.jpeg) == (slow.reason, slow.jpeg), cut
        reasons.add(fast.reason)
    assert "truncated" in reasons and None not in reasons
    # A cut inside the scan is "truncated" although libjpeg-turbo itself would fill the rest with grey.
    assert process_image(data[: len(data) // 2]).reason == "truncated"


def test_libjpeg_turbo_warnings_fall_back_to_pillow(spy: SpyJpeg, monkeypatch) -> None:
    data = encode(scene(450, 340))
    app0_end = 4 + (data[4] << 8 | data[5])
    odd = data[:app0_end] + b"\x00\x00" + data[app0_end:]  # junk between segments: libjpeg warns, Pillow skips
    with pytest.raises(ValueError):
        simplejpeg.decode_jpeg(odd)
    r = process_image(odd)
    assert spy.headers == 1 and r.ok  # libjpeg-turbo saw it first (its header parse already warns)
    assert r.jpeg == pillow_path(monkeypatch, odd).jpeg


@pytest.mark.parametrize("data", [b"\xff\xd8", b"\xff\xd8junk", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 40])
def test_broken_jpeg_headers_get_the_pillow_reason(data: bytes, monkeypatch) -> None:
    fast = process_image(data)
    slow = pillow_path(monkeypatch, data)
    assert not fast.ok and fast.reason == slow.reason


def test_bomb_guard_reads_the_header_only(spy: SpyJpeg, monkeypatch) -> None:
    data = encode(scene(1200, 1000))
    r = process_image(data, max_image_pixels=1_000_000)
    assert not r.ok and r.reason == "too_large" and (r.src_width, r.src_height) == (1200, 1000)
    assert spy.decodes == 0
    slow = pillow_path(monkeypatch, data, max_image_pixels=1_000_000)
    assert (slow.reason, slow.src_width, slow.src_height, slow.detail) == ("too_large", 1200, 1000, r.detail)


def test_without_simplejpeg_every_jpeg_still_works(monkeypatch) -> None:
    monkeypatch.setattr(imaging, "_simplejpeg", None)
    for data in (encode(scene(450, 340)), encode(scene(450, 340).convert("L")), exif_jpeg(scene(400, 260), 6)):
        assert pixels(process_image(data)).shape[2] == 3
    assert process_image(encode(scene(300, 200))[:900]).reason == "truncated"
