"""Fingerprints of a fall11-sized release, without its pixels: for measuring prepare's duplicate join at scale.

Decoding 14.2 M images to fingerprint them would take days on a small machine; the join only sees the
fingerprints, so ``manifest_parts`` writes manifest parts (``in21k.pipeline.shard.manifest_schema``) whose
fingerprints follow a model of real ones, class by class, with fall11's long-tailed class sizes
(``in21k.synth.scale.class_sizes``):

- every ``phash`` is the sign of 64 coefficients against their median, as the real hash is; the coefficients
  have more variance at low frequencies (``1 / (1 + k / 6)`` for the k-th), as photographs do;
- a class has two "looks" (prototype coefficient vectors): an image is ``a * look + noise`` with ``a`` uniform
  in 0.4..0.9, so images of a class are correlated (their hashes ~26-30 bits apart, unrelated ones ~32), like the
  look-alikes of real classes;
- planted near groups: ``near_share`` of the images are copies of an earlier image (70 % of its class, 30 % of
  another) with small noise (0-12 bits away), ``exact_share`` are exact copies (same pixel hash, colours);
- a cluster of ``blank_share`` near-identical images (blank and placeholder pictures) that fall into one huge
  bucket of every table;
- colour grids are random for originals and close for copies.

The model is not the real distribution (which nobody has offline), but it has its features that cost the join
time: correlated hashes within classes, clusters, and exact and near groups. ``scripts/dedup_scale.py``
measures the join on it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np

from in21k.synth.scale import DROPPED_MAX, DROPPED_SIGMA, FALL11_MEMBERS, KEPT_MAX, KEPT_MIN, KEPT_SIGMA, class_sizes

PART_ROWS = 1450  # rows per manifest part, as fall11's shards of ~1,440 samples
LOOKS = 2


def _sizes(members: int, rng: np.random.Generator) -> np.ndarray:
    """Class sizes of fall11's shape scaled to ``members`` (kept and dropped classes alike: all are fingerprinted,
    an upper bound of what prepare reads)."""
    from in21k.synth.scale import _scaled_shape

    kept_classes, kept_members, dropped_classes, dropped_members = _scaled_shape(members)
    kept = class_sizes(rng, kept_classes, kept_members, KEPT_MIN, KEPT_MAX, KEPT_SIGMA)
    dropped = class_sizes(rng, dropped_classes, dropped_members, 1, DROPPED_MAX, DROPPED_SIGMA)
    sizes = np.concatenate([kept, dropped])
    rng.shuffle(sizes)
    return sizes


def manifest_parts(
    members: int = FALL11_MEMBERS,
    *,
    seed: int = 0,
    near_share: float = 0.06,
    exact_share: float = 0.02,
    blank_share: float = 0.0002,
) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
    """``(part number, parquet bytes, counts)`` of the manifest parts of a release of ``members`` images."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from in21k.pipeline.shard import manifest_schema

    rng = np.random.default_rng(seed)
    sizes = _sizes(members, rng)
    scale = np.sqrt(1.0 / (1.0 + np.arange(64) / 6.0)).astype(np.float32)
    blank = rng.normal(size=64).astype(np.float32) * scale
    schema = manifest_schema()
    recent_x: list[np.ndarray] = []  # a reservoir of other classes' images, for copies across classes
    recent_c: list[np.ndarray] = []
    recent_p: list[np.ndarray] = []
    buf: dict[str, list] = {k: [] for k in ("wnid", "member", "key", "x", "colors", "pixel")}
    part = 0
    counts = {"near": 0, "exact": 0, "blank": 0}

    def flush() -> tuple[int, bytes]:
        n = len(buf["wnid"])
        x = np.stack(buf["x"])
        mid = np.median(x, axis=1, keepdims=True)
        phash = np.ascontiguousarray(np.packbits(x > mid, axis=1)).view(">u8").ravel().astype(np.uint64)
        cols = {
            "wnid": pa.array(buf["wnid"], pa.string()),
            "member": pa.array(buf["member"], pa.string()),
            "source": pa.array(["synthetic"] * n, pa.string()),
            "offset": pa.array(np.zeros(n, np.int64)),
            "split": pa.array(["train"] * n, pa.string()),
            "shard": pa.array(np.full(n, part, np.int32)),
            "key": pa.array(buf["key"], pa.string()),
            "status": pa.array(["written"] * n, pa.string()),
            "src_bytes": pa.array(np.full(n, 110_000, np.int64)),
            "src_width": pa.array(np.full(n, 500, np.int32)),
            "src_height": pa.array(np.full(n, 375, np.int32)),
            "phash": pa.array(phash, pa.uint64()),
            "colors": pa.array([c.tobytes() for c in buf["colors"]], pa.binary()),
            "pixel_hash": pa.array(np.array(buf["pixel"], np.uint64), pa.uint64()),
        }
        table = pa.table([cols[f.name] if f.name in cols else pa.nulls(n, f.type) for f in schema], schema=schema)
        out = io.BytesIO()
        pq.write_table(table, out, compression="zstd")
        for v in buf.values():
            v.clear()
        return part, out.getvalue()

    number = 0
    for c, size in enumerate(sizes.tolist()):
        wnid = f"n{90_000_000 + c:08d}"
        looks = rng.normal(size=(LOOKS, 64)).astype(np.float32) * scale
        xs: list[np.ndarray] = []
        for _ in range(size):
            number += 1
            u = rng.random()
            if u < blank_share:
                x = blank + rng.normal(size=64).astype(np.float32) * scale * 0.03
                colors, pixel = np.full(48, 250, np.uint8), int(rng.integers(0, 2**63))
                counts["blank"] += 1
            elif u < blank_share + exact_share + near_share and (xs or recent_x):
                if (rng.random() < 0.7 and xs) or not recent_x:  # a copy of an image of its class
                    pool = (xs, buf["colors"][-len(xs) :], buf["pixel"][-len(xs) :])
                else:
                    pool = (recent_x, recent_c, recent_p)
                k = int(rng.integers(len(pool[0])))
                x, colors, pixel = pool[0][k], pool[1][k], pool[2][k]
                if u < blank_share + exact_share:
                    counts["exact"] += 1
                else:
                    x = x + rng.normal(size=64).astype(np.float32) * scale * rng.uniform(0.0, 0.25)
                    colors = np.clip(colors.astype(np.int16) + rng.integers(-2, 3, 48), 0, 255).astype(np.uint8)
                    pixel = int(rng.integers(0, 2**63))
                    counts["near"] += 1
            else:
                a = rng.uniform(0.4, 0.9)
                noise = rng.normal(size=64).astype(np.float32) * scale
                x = a * looks[int(rng.integers(LOOKS))] + np.sqrt(1 - a * a) * noise
                colors, pixel = rng.integers(0, 256, 48, dtype=np.uint8), int(rng.integers(0, 2**63))
            xs.append(x)
            buf["wnid"].append(wnid)
            buf["member"].append(f"{wnid}_{number}.JPEG")
            buf["key"].append(f"{wnid}_{number}")
            buf["x"].append(x)
            buf["colors"].append(colors)
            buf["pixel"].append(pixel)
            if len(buf["wnid"]) == PART_ROWS:
                xs = []  # copies come from the images still in the buffer (within the class) or the reservoir
                yield (*flush(), counts)
                part += 1
        m = min(20, len(xs))  # the class's last images, still in the buffer, join the reservoir
        if m:
            recent_x += xs[-m:]
            recent_c += buf["colors"][-m:]
            recent_p += buf["pixel"][-m:]
            del recent_x[:-2000], recent_c[:-2000], recent_p[:-2000]
    if buf["wnid"]:
        yield (*flush(), counts)
