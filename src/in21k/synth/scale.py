"""A raw release with fall11's real shape, at any scale: for load tests of ``in21k prepare``.

fall11 holds 14,197,122 images in 21,841 class tars ``nXXXXXXXX.tar``. ImageNet-21K-P keeps the 11,221
classes with more than 500 images (11,797,632 train + 561,052 val = 12,358,684 images); the other 10,620
classes share the remaining 1,838,438. Those totals are exact here; the per-class counts of the real
release are not available offline, so they are drawn, seeded, from a documented long-tailed law:

- a class of a group with sizes ``lo..hi`` gets ``lo + (hi - lo) * (1 - exp(-s * w))`` members, ``w``
  log-normal with sigma ``KEPT_SIGMA`` or ``DROPPED_SIGMA`` (seeded), ``s`` chosen so that the group holds
  exactly its total: a log-normal tail that saturates smoothly below ``hi`` (``class_sizes``);
- kept classes: ``501..5,000`` (median ~980, 90th percentile ~1,650, largest ~4,500 at full size);
- dropped classes: ``1..499`` (median ~145, 90th percentile ~350), so ``prepare``'s default
  ``--min-images 500`` keeps exactly the kept classes, as the original's ``> 500`` rule did;
- integer counts by largest remainder, so every total is exact.

Class wnids are real WordNet 3.0 nouns: the kept ones are the 11,221 ImageNet-21K-P classes
(``SemanticTree.builtin("fall11")``), the dropped ones a seeded sample of the other noun synsets (the
real list of fall11's 21,841 is not shipped). ``members`` scales everything proportionally: class counts
(kept and dropped) and members per split keep fall11's ratios, so the class-size law, the prepare
defaults and the share of validation samples are the same at 1 M, 4 M or 14.2 M members.

Every member is a real-looking ``nXXXXXXXX_NNNN.JPEG`` (distinct image numbers, in random order as in
the real tars) holding one of a pool of distinct tiny valid JPEGs (a few hundred bytes, 8-16 px), so a
member takes two 512-byte tar blocks and 14.2 M members take ~14.6 GB. Tars are written with fixed
ustar headers built from one template per JPEG (``in21k.tarformat.ustar_header``) with the name and
checksum patched in: ~1-2 us per member instead of ~30 us with ``tarfile.addfile``.
"""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path

import numpy as np

from in21k.errors import ConfigError
from in21k.progress import progress
from in21k.tarformat import end_of_archive, ustar_header

log = logging.getLogger(__name__)

FALL11_MEMBERS = 14_197_122
FALL11_CLASSES = 21_841
KEPT_CLASSES = 11_221
KEPT_MEMBERS = 11_797_632 + 561_052
DROPPED_CLASSES = FALL11_CLASSES - KEPT_CLASSES
DROPPED_MEMBERS = FALL11_MEMBERS - KEPT_MEMBERS
KEPT_MIN = 501  # the original kept a class only with more than 500 images
KEPT_MAX = 5_000
DROPPED_MAX = 499  # below prepare's default --min-images 500
KEPT_SIGMA = 0.75
DROPPED_SIGMA = 1.0
MIN_MEMBERS = 1_000  # below this, one kept class cannot hold 501 members in proportion
POOL_SIZE = 256
VAL_PER_CLASS = 50
MIN_IMAGES = 500
SCHEMA = "in21k.synth-report/1"


def _scaled_shape(members: int) -> tuple[int, int, int, int]:
    """(kept classes, kept members, dropped classes, dropped members) for ``members`` in all."""
    f = members / FALL11_MEMBERS
    kept_classes = max(1, round(KEPT_CLASSES * f))
    dropped_classes = max(1, round(DROPPED_CLASSES * f))
    kept_members = round(KEPT_MEMBERS * f)
    dropped_members = members - kept_members
    if not (
        kept_classes * KEPT_MIN <= kept_members <= kept_classes * KEPT_MAX
        and dropped_classes <= dropped_members <= dropped_classes * DROPPED_MAX
    ):
        raise ConfigError(f"--members {members}: too few for fall11's shape; give at least {MIN_MEMBERS:,}")
    return kept_classes, kept_members, dropped_classes, dropped_members


def class_sizes(rng: np.random.Generator, count: int, total: int, lo: int, hi: int, sigma: float) -> np.ndarray:
    """``count`` integers in ``lo..hi`` summing to ``total``: ``lo + (hi - lo) * (1 - exp(-s * w))`` with ``w``
    log-normal (``sigma``), ``s`` found by bisection, then integers by largest remainder.

    For small ``s * w`` this is ``lo`` plus a log-normal; near ``hi`` it saturates smoothly, so no pile of
    classes sits at the cap.
    """
    if not count * lo <= total <= count * hi:
        raise ConfigError(f"cannot spread {total} members over {count} classes of {lo}..{hi}")
    w = rng.lognormal(0.0, sigma, count)
    if total == count * hi:  # the law only approaches hi
        return np.full(count, hi, dtype=np.int64)

    def spread(s: float) -> np.ndarray:
        return lo + (hi - lo) * -np.expm1(-s * w)

    a, b = 0.0, 1.0
    while spread(b).sum() < total:
        b *= 2
    for _ in range(200):
        s = (a + b) / 2
        if spread(s).sum() < total:
            a = s
        else:
            b = s
    x = np.minimum(spread(b), hi)
    sizes = np.floor(x).astype(np.int64)
    left = int(total - sizes.sum())
    if left < 0:  # the bisection's upper end overshot by rounding: take from the largest
        order = np.argsort(-(x - sizes), kind="stable")
        order = order[sizes[order] > lo]
        sizes[order[:-left]] -= 1
    elif left > 0:
        order = np.argsort(-(x - sizes), kind="stable")
        order = order[sizes[order] < hi]
        sizes[order[:left]] += 1
    if int(sizes.sum()) != total:  # pragma: no cover - the remainder is always smaller than count
        raise RuntimeError("class sizes do not add up")
    return sizes


def jpeg_pool(seed: int, count: int = POOL_SIZE) -> list[bytes]:
    """``count`` distinct tiny valid JPEGs (8-16 px, 300-400 bytes with optimized Huffman tables)."""
    from PIL import Image

    rng = np.random.default_rng([seed, 1])
    pool: list[bytes] = []
    seen: set[bytes] = set()
    while len(pool) < count:
        w, h = (int(v) for v in rng.integers(8, 17, size=2))
        colour = rng.integers(0, 256, size=3)
        pixels = np.clip(colour + rng.normal(0, 24, size=(h, w, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buf, format="JPEG", quality=int(rng.integers(40, 80)), optimize=True)
        data = buf.getvalue()
        if data not in seen and len(data) <= 512:
            seen.add(data)
            pool.append(data)
    return pool


class _Headers:
    """ustar headers of the pool's members: one template per JPEG size, name and checksum patched in.

    The bytes equal ``in21k.tarformat.ustar_header(name, size)`` (tested), for names up to 100 bytes.
    """

    def __init__(self, sizes: list[int]) -> None:
        self._tail: dict[int, tuple[bytes, bytes, int]] = {}
        for size in set(sizes):
            blank = ustar_header("", size)  # no name: its checksum is that of the fixed fields
            base = int(blank[148:154], 8)
            self._tail[size] = (blank[100:148], blank[156:], base)

    def __call__(self, name: bytes, size: int) -> bytes:
        middle, rest, base = self._tail[size]
        return name.ljust(100, b"\0") + middle + b"%06o\0 " % (base + sum(name)) + rest


def _pick_wnids(rng: np.random.Generator, kept_classes: int, dropped_classes: int) -> tuple[list[str], list[str]]:
    from in21k.tree import SemanticTree
    from in21k.tree.wordnet import load_wordnet

    kept_all = SemanticTree.builtin("fall11").wnids
    kept_set = set(kept_all)
    # Every noun synset's offset, from WordNet's data file (20x faster than building 82,115 Synset objects).
    with load_wordnet().open("data.noun") as f:
        nouns = ["n" + line[:8] for line in f if not line.startswith(" ")]
    others = sorted(w for w in nouns if w not in kept_set)
    kept = sorted(kept_all) if kept_classes == len(kept_all) else sorted(rng.choice(kept_all, kept_classes, False))
    dropped = sorted(rng.choice(others, dropped_classes, replace=False))
    return [str(w) for w in kept], [str(w) for w in dropped]


def write_fall11_scale(out: str | Path, *, members: int = FALL11_MEMBERS, seed: int = 0) -> dict:
    """Write a fall11-shaped release of ``members`` members into ``out``; returns its report.

    Also writes ``out/synth_report.json`` (totals, per-class counts, the prepare options that
    reproduce fall11's pruning, and the counts ``prepare`` must then plan) and ``out/synsets.txt``.
    """
    if members < MIN_MEMBERS:
        raise ConfigError(f"--members must be at least {MIN_MEMBERS:,} for fall11's shape (got {members:,})")
    kept_classes, kept_members, dropped_classes, dropped_members = _scaled_shape(members)
    rng = np.random.default_rng(seed)
    kept, dropped = _pick_wnids(rng, kept_classes, dropped_classes)
    sizes = {
        **dict(zip(kept, class_sizes(rng, kept_classes, kept_members, KEPT_MIN, KEPT_MAX, KEPT_SIGMA), strict=True)),
        **dict(
            zip(
                dropped,
                class_sizes(rng, dropped_classes, dropped_members, 1, DROPPED_MAX, DROPPED_SIGMA),
                strict=True,
            )
        ),
    }
    pool = jpeg_pool(seed)
    blocks = [data.ljust(512, b"\0") for data in pool]
    headers = _Headers([len(d) for d in pool])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wnids = sorted(sizes)
    t0 = time.perf_counter()
    written_bytes = 0
    with progress(total=members, unit="member", unit_scale=True, desc="fall11-shaped tars") as bar:
        for wnid in wnids:
            n = int(sizes[wnid])
            numbers = rng.permutation(3 * n + 10)[:n] + 1  # distinct image numbers, random order
            picks = rng.integers(0, len(pool), size=n)
            prefix = wnid.encode() + b"_"
            parts = []
            for number, k in zip(numbers.tolist(), picks.tolist(), strict=True):
                parts.append(headers(b"%s%d.JPEG" % (prefix, number), len(pool[k])))
                parts.append(blocks[k])
            parts.append(end_of_archive(1024 * n))
            blob = b"".join(parts)
            (out / f"{wnid}.tar").write_bytes(blob)
            written_bytes += len(blob)
            bar.update(n)
    seconds = time.perf_counter() - t0
    log.info(
        "wrote %d members in %d class tars (%.1f GB) in %.0f s (%.0f members/s)",
        members,
        len(wnids),
        written_bytes / 1e9,
        seconds,
        members / seconds,
    )
    val = VAL_PER_CLASS * kept_classes
    kept_set = set(kept)
    report = {
        "schema": SCHEMA,
        "shape": "fall11",
        "config": {"out": str(out), "members": members, "seed": seed},
        "layout": "class-tars",
        "files": [f"{w}.tar" for w in wnids],
        "totals": {
            "classes": len(wnids),
            "wordnet_noun_classes": len(wnids),
            "members": members,
            "readable": members,
            "unreadable": 0,
            "kinds": {"jpeg": members},
            "bytes": written_bytes,
        },
        "fall11_shape": {
            "scale": members / FALL11_MEMBERS,
            "kept_classes": kept_classes,
            "kept_members": kept_members,
            "dropped_classes": dropped_classes,
            "dropped_members": dropped_members,
            "kept_law": f"lo + (hi - lo) * (1 - exp(-s * lognormal(sigma={KEPT_SIGMA}))), lo..hi = "
            f"{KEPT_MIN}..{KEPT_MAX}, s fitted to the total",
            "dropped_law": f"lo + (hi - lo) * (1 - exp(-s * lognormal(sigma={DROPPED_SIGMA}))), lo..hi = "
            f"1..{DROPPED_MAX}, s fitted to the total",
            "jpeg_pool": len(pool),
            "jpeg_bytes": [min(len(d) for d in pool), max(len(d) for d in pool)],
        },
        # What `in21k prepare --min-images 500 --val-per-class 50` (its defaults) must plan for this release.
        "expected_prepare": {
            "min_images": MIN_IMAGES,
            "val_per_class": VAL_PER_CLASS,
            "classes_kept": kept_classes,
            "classes_dropped": dropped_classes,
            "dropped_class_members": dropped_members,
            "train_samples": kept_members - val,
            "validation_samples": val,
        },
        "generate_seconds": round(seconds, 1),
        "classes": [{"wnid": w, "members": int(sizes[w]), "kept": w in kept_set} for w in wnids],
    }
    (out / "synth_report.json").write_text(json.dumps(report, indent=1))
    (out / "synsets.txt").write_text("".join(w + "\n" for w in kept))
    return report
