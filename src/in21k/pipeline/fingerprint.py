"""Image fingerprints: what the duplicate finder compares, computed from the pixels ``prepare`` writes.

Every image the shard tasks decode gets three fingerprints, from the image as it is about to be encoded (after
the resize and the EXIF rotation): the raw release is decoded once, and both decode paths of
``in21k.pipeline.imaging`` give the same fingerprint for the same image (they give the same pixels).

- ``phash``: a 64-bit DCT hash (pHash). The image is point-sampled to a 64 x 64 thumbnail (``thumbnail``), a
  border of one colour around it is trimmed (below), the rest is reduced to 32 x 32 by 2 x 2 block means, and
  of the 2-D DCT of its luma the 64 lowest-frequency coefficients after the DC term (zigzag order) give one bit
  each: above their median or not. Every hash has 32 ones, so distances are even. On the planted release,
  re-encoding and rescaling move it by 0-2 bits, crops of 1-5 % by 0-14 (90 % within 10), an added border
  (trimmed) by 0-16 (90 % within 10).
- ``colors``: the mean colour of the same trimmed thumbnail in a 4 x 4 grid (48 bytes). It verifies a
  candidate pair found by the hash: ``color_distance`` compares the grids in YCbCr with each channel's mean
  removed, so brightness shifts and colour casts do not count, and looks at chroma only where both images have
  colour. It is what tells two different pictures with a similar luma layout apart: 64 bits alone cannot, at
  10^14 pairs.
- ``pixel_hash`` (``exact_hash``): the length and CRC-32 of the encoded image. The encoder is deterministic, so
  two members whose decoded pixels are equal have equal hashes, whatever their file bytes or metadata (the
  manifest's ``sha1`` is of the source bytes).

Border trimming (``trim_box``): rows and columns at the edges whose every pixel is within ``TRIM_TOLERANCE``
levels of the outermost line's mean colour are cut (at most a third of each side), so a copy with a frame added
matches its original; the trimmed part is box-resampled to 32 x 32. An image whose own edges are flat (a
product on white) is trimmed the same way in both copies.

The work is split for speed: ``thumbnail`` per image (a few microseconds of PIL), ``fingerprints`` per read batch
of 32 (numpy, in a loop that stays in the CPU's caches). Together they add ~4 % to the image step's CPU time
(``in21k bench decode`` prints it as ``fingerprint_cost``); why these choices, with figures: docs/clean-data.md.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
from PIL import Image

THUMB_SIDE = 64  # the thumbnail both the trim and the reductions work on
HASH_SIDE = 32  # the DCT size of pHash
HASH_BITS = 64
COLOR_GRID = 4  # colors: COLOR_GRID x COLOR_GRID cells x RGB
COLOR_BYTES = COLOR_GRID * COLOR_GRID * 3
TRIM_TOLERANCE = 12.0  # 8-bit levels: a border line may vary this much (JPEG noise on a flat colour)
TRIM_MAX = THUMB_SIDE // 3  # at most this many lines are cut from a side, so a flat image stays whole
# Chroma below this mean deviation (8-bit levels) counts as a grey image: its copies are compared by luma only.
GREY_CHROMA = 3.0


def _dct_rows(n: int, rows: int) -> np.ndarray:
    """The first ``rows`` rows of the orthonormal DCT-II matrix of size ``n``."""
    k = np.arange(rows)[:, None]
    x = np.arange(n)[None, :]
    m = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * x + 1) * k / (2 * n))
    m[0] /= np.sqrt(2.0)
    return m.astype(np.float32)


def _zigzag(size: int, count: int) -> np.ndarray:
    """Flat indices into a ``size`` x ``size`` block of the first ``count`` coefficients in zigzag order."""
    cells = sorted(
        ((u, v) for u in range(size) for v in range(size)),
        key=lambda p: (p[0] + p[1], p[1] if (p[0] + p[1]) % 2 else p[0]),
    )
    return np.array([u * size + v for u, v in cells[:count]], dtype=np.int64)


_LOW = 11  # the first 64 AC coefficients in zigzag order lie within the 11 x 11 lowest frequencies (u + v <= 10)
_DCT = _dct_rows(HASH_SIDE, _LOW)  # (11, 32)
_DCT_T = np.ascontiguousarray(_DCT.T)
_AC = _zigzag(_LOW, HASH_BITS + 1)[1:]  # DC left out: it is the brightness


# The four outermost lines of the thumbnail (top, bottom, left, right), as indices into its pixels.
_SIDE = np.arange(THUMB_SIDE)
_LAST = THUMB_SIDE - 1
_OUTER = np.concatenate([_SIDE, _LAST * THUMB_SIDE + _SIDE, _SIDE * THUMB_SIDE, _SIDE * THUMB_SIDE + _LAST])
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601 luma, as JPEG and PIL's "L" use
# YCbCr (JPEG's) from RGB, for color_distance
_YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], np.float32)


def thumbnail(img: Any) -> Any:
    """The 64 x 64 thumbnail (a PIL image) of a PIL image that the fingerprints are computed from. Its pixels are
    taken out later, in ``fingerprints``, for a whole batch at once: code that runs in a loop stays in the CPU's
    caches, which for the few microseconds of work per image matters more than the work itself.

    Point sampling: the written pixels are already antialiased by prepare's resize, and a box filter here would
    cost as much as the rest of the fingerprint (docs/clean-data.md). A large image (``--resize none``) is
    box-reduced first, to at most twice the thumbnail, so that sampling it does not alias.
    """
    factor = min(img.size) // (2 * THUMB_SIDE)
    if factor >= 2:
        img = img.reduce(factor)
    thumb = img.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.NEAREST)
    return thumb if thumb.mode in ("RGB", "RGBX", "RGBA") else thumb.convert("RGB")


def exact_hash(encoded: bytes) -> int:
    """``pixel_hash``: the encoded image's length (high 32 bits) and CRC-32 (low 32 bits) as an unsigned integer.

    A CRC rather than SHA-1: it costs a third (~5 us for a 224 px JPEG). Two pictures with
    equal ``pixel_hash`` are grouped only when their ``phash`` and ``colors`` are equal too, so a collision
    cannot merge different pictures.
    """
    return (len(encoded) & 0xFFFFFFFF) << 32 | zlib.crc32(encoded)


def _border_lines(lines: np.ndarray) -> int:
    """How many of ``lines`` (channels x lines x pixels, the outermost first) are a border: every pixel within
    ``TRIM_TOLERANCE`` of the outermost line's mean colour."""
    ref = lines[:, 0].mean(axis=1, dtype=np.float32)[:, None]
    off = (np.maximum(lines.max(axis=2) - ref, ref - lines.min(axis=2)) > TRIM_TOLERANCE).any(axis=0)
    return int(np.argmax(off)) if off.any() else len(off)


def trim_box(thumb: np.ndarray) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of ``thumb`` (height x width x channels, uint8; RGB first) inside a border of
    one colour, at most ``TRIM_MAX`` lines from each side."""
    h, w = thumb.shape[:2]
    chw = np.ascontiguousarray(thumb[:, :, :3].transpose(2, 0, 1))  # reductions run fast along the last axis
    cwh = np.ascontiguousarray(chw.transpose(0, 2, 1))
    n = TRIM_MAX
    top, bottom = _border_lines(chw[:, :n]), _border_lines(chw[:, : -n - 1 : -1])
    left, right = _border_lines(cwh[:, :n]), _border_lines(cwh[:, : -n - 1 : -1])
    if top == bottom == n:  # flat from both sides: a flat image (along this axis), not a frame
        top = bottom = 0
    if left == right == n:
        left = right = 0
    return left, top, w - right, h - bottom


def _box_weights(start: int, stop: int, n: int) -> np.ndarray:
    """(n, THUMB_SIDE): a box filter from the pixels ``start:stop`` of a thumbnail line to ``n`` pixels."""
    edges = start + (stop - start) * np.arange(n + 1, dtype=np.float64) / n
    k = np.arange(THUMB_SIDE, dtype=np.float64)
    overlap = np.minimum(k[None, :] + 1, edges[1:, None]) - np.maximum(k[None, :], edges[:-1, None])
    return (np.clip(overlap, 0, None) * n / (stop - start)).astype(np.float32)


def _block_means(images: np.ndarray, f: int) -> np.ndarray:
    """Means of the ``f`` x ``f`` blocks of ``images`` (n x h x w x channels), as float32 (n x h/f x w/f x 3):
    the first three channels (RGB of RGBX).

    Whole lines and strided views are added, with no reduction over several axes and no matrix product: numpy
    is slow at the first, and OpenBLAS would run the second on all cores, spinning in this process.
    """
    n, h, w, c = images.shape
    lines = images.reshape(n, h // f, f, w * c)
    rows = lines[:, :, 0].astype(np.uint16 if images.dtype == np.uint8 and f * f <= 256 else np.float32)
    for k in range(1, f):
        rows += lines[:, :, k]
    cells = rows.reshape(n, h // f, w // f, f, c)[..., :3]
    out = cells[:, :, :, 0].astype(np.float32)
    for k in range(1, f):
        out += cells[:, :, :, k]
    return out / (f * f)


def _half(pixels: np.ndarray) -> np.ndarray:
    """The 2 x 2 block means of RGBX ``pixels`` (n x h x w, each a little-endian uint32) as float32 RGB
    (n x h/2 x w/2 x 3).

    SIMD within a register: masked, a pixel holds R and B (or G and X) in two 16-bit lanes, so one addition of
    uint32 arrays sums two channels and four 8-bit values never carry into the next lane. Several times faster
    than summing strided uint8 views per channel, for every image prepare writes.
    """
    n, h, w = pixels.shape
    mask = np.uint32(0x00FF00FF)
    lanes = []
    for part in (pixels & mask, (pixels >> np.uint32(8)) & mask):
        rows = part.reshape(n, h // 2, 2 * w)
        pairs = rows[:, :, :w] + rows[:, :, w:]  # two lines, whole and contiguous
        lanes.append(pairs[:, :, 0::2] + pairs[:, :, 1::2])
    rb, gx = lanes
    out = np.empty((n, h // 2, w // 2, 3), np.float32)
    out[..., 0] = rb & np.uint32(0xFFFF)
    out[..., 1] = gx & np.uint32(0xFFFF)
    out[..., 2] = rb >> np.uint32(16)
    out *= 0.25
    return out


def fingerprints(thumbnails: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(phash, colors)`` of many ``thumbnail`` images at once: a uint64 array and an (n, COLOR_BYTES) uint8 array.

    Batched because the work per image is small and numpy's per-call cost is not: the shard tasks fingerprint
    each read batch in one call.
    """
    n = len(thumbnails)
    if n == 0:
        return np.empty(0, np.uint64), np.empty((0, COLOR_BYTES), np.uint8)
    raw = b"".join(t.tobytes("raw", "RGBX") for t in thumbnails)
    thumbs = np.frombuffer(raw, np.uint8).reshape(n, THUMB_SIDE, THUMB_SIDE, 4)
    # Images without a flat outer line (most) keep the whole thumbnail: its 3 x 3 block means. The outer lines as
    # (image, channel, line, pixel), so that the reductions run along a contiguous axis.
    flat = thumbs.reshape(n, -1, 4)
    outer = np.ascontiguousarray(flat[:, _OUTER, :3].transpose(0, 2, 1)).reshape(n, 3, 4, THUMB_SIDE)
    whole = ((outer.max(axis=3) - outer.min(axis=3)) > 2 * TRIM_TOLERANCE).any(axis=1).all(axis=1)
    small = _half(np.frombuffer(raw, "<u4").reshape(n, THUMB_SIDE, THUMB_SIDE))
    for i in np.flatnonzero(~whole):
        left, top, right, bottom = trim_box(thumbs[i])
        wy, wx = _box_weights(top, bottom, HASH_SIDE), _box_weights(left, right, HASH_SIDE)
        small[i] = np.einsum("yh,hwc,xw->yxc", wy, thumbs[i, :, :, :3].astype(np.float32), wx)
    luma = small[..., 0] * _LUMA[0] + small[..., 1] * _LUMA[1] + small[..., 2] * _LUMA[2]
    # Separable 2-D DCT of the 11 x 11 lowest frequencies: small products per image (11 x 32 x 32), which
    # OpenBLAS runs on one core.
    coef = (_DCT @ luma @ _DCT_T).reshape(n, -1)[:, _AC]
    half = HASH_BITS // 2
    mid = np.partition(coef, (half - 1, half), axis=1)
    mid = (mid[:, half - 1] + mid[:, half])[:, None] / 2  # the median of the 64: between the 32nd and 33rd
    phash = np.ascontiguousarray(np.packbits(coef > mid, axis=1)).view(">u8").ravel().astype(np.uint64)
    grid = _block_means(small, HASH_SIDE // COLOR_GRID)
    return phash, np.rint(grid).astype(np.uint8).reshape(n, COLOR_BYTES)


# ----------------------------------------------------------------------------------------- comparing
def color_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of colour grids (``(..., COLOR_BYTES)`` uint8 arrays), in 8-bit levels: the mean absolute
    difference of their YCbCr cells, each channel's mean over the grid removed first (brightness and colour
    casts do not count). Luma counts once and chroma twice where both images have colour; luma alone where
    either is grey."""
    ya = a.reshape(*a.shape[:-1], COLOR_GRID * COLOR_GRID, 3).astype(np.float32) @ _YCC.T
    yb = b.reshape(*b.shape[:-1], COLOR_GRID * COLOR_GRID, 3).astype(np.float32) @ _YCC.T
    ya -= ya.mean(axis=-2, keepdims=True)
    yb -= yb.mean(axis=-2, keepdims=True)
    luma = np.abs(ya[..., 0] - yb[..., 0]).mean(axis=-1)
    chroma = np.abs(ya[..., 1:] - yb[..., 1:]).mean(axis=(-1, -2))
    colourful = np.minimum(np.abs(ya[..., 1:]).mean(axis=(-1, -2)), np.abs(yb[..., 1:]).mean(axis=(-1, -2)))
    return np.where(colourful > GREY_CHROMA, (luma + 2 * chroma) / 3, luma).astype(np.float32)


def colors_array(values: Any) -> np.ndarray:
    """A column of ``colors`` (Arrow binary or a list of bytes, all ``COLOR_BYTES`` long) as an (n, 48) uint8 array."""
    import pyarrow as pa

    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if len(values) == 0:
            return np.empty((0, COLOR_BYTES), np.uint8)
        values = values.cast(pa.binary())
        offsets = np.frombuffer(values.buffers()[1], np.int32, len(values) + 1, values.offset * 4)
        data = np.frombuffer(values.buffers()[2], np.uint8)
        first = int(offsets[0])
        if int(offsets[-1]) - first != COLOR_BYTES * len(values):
            raise ValueError("a colors value is not 48 bytes long")
        return data[first : int(offsets[-1])].reshape(-1, COLOR_BYTES)
    return np.frombuffer(b"".join(values), np.uint8).reshape(-1, COLOR_BYTES)
