"""Data the benchmarks generate: a corpus of JPEGs with the raw release's size mix, and prepared datasets.

The corpus mimics the release's size mix: most images have a long side of 300-500 px (Flickr's
"medium" size that dominates ImageNet) and a tail (``tail_share``, default 5%) has a long side of
800-4000 px, log-uniform. With noise-textured content at JPEG quality 90, 5% of tail gives ~100 KB per
image on average, close to the real release (fall11: 1.31 TB / 14.2 M images = 92 KB).

``make_bench_data`` writes a prepared dataset (through ``in21k.dataset``, like ``prepare``) of 224 px
JPEGs at quality 95 with random labels of a real class list, for loader and trainer benchmarks that need
neither WordNet nor a raw release.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np


def _image_size(rng: np.random.Generator, tail_share: float) -> tuple[int, int]:
    if rng.random() < tail_share:
        long_side = int(np.exp(rng.uniform(np.log(800), np.log(4000))))
    else:
        long_side = int(rng.integers(300, 501))
    short = int(long_side / rng.uniform(1.0, 1.5))
    return (long_side, short) if rng.random() < 0.7 else (short, long_side)


def make_corpus(n: int, *, tail_share: float, seed: int) -> list[bytes]:
    """``n`` JPEGs (quality 90): a smooth random scene plus pixel noise, which gives photo-like file sizes."""
    from PIL import Image

    rng = np.random.default_rng(seed)

    out = []
    for _ in range(n):
        w, h = _image_size(rng, tail_share)
        scene = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        arr = np.asarray(scene, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3), dtype=np.int16)
        buf = io.BytesIO()
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def is_tail(data: bytes) -> bool:
    from PIL import Image

    return max(Image.open(io.BytesIO(data)).size) > 500


def _bench_shard(args: tuple) -> tuple[str, int]:
    from PIL import Image

    from in21k.dataset import write_samples

    path, labels, size, seed = args
    rng = np.random.default_rng(seed)

    def samples():
        for j, label in enumerate(labels):
            # Smooth colour fields plus noise: JPEG sizes close to natural 224 px photos at quality 95.
            low = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
            img = np.asarray(Image.fromarray(low).resize((size, size), Image.BICUBIC), dtype=np.int16)
            img = np.clip(img + rng.integers(-12, 13, size=img.shape), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=95)
            yield (
                f"{Path(path).stem.replace('-', '_')}_{j:05d}",
                {"jpg": buf.getvalue(), "cls": str(int(label)).encode()},
            )

    return Path(path).name, len(write_samples(path, samples()))


def make_bench_data(
    root: str | Path,
    *,
    images: int,
    shards: int,
    tree_name: str = "fall11",
    image_size: int = 224,
    workers: int = 0,
    seed: int = 0,
) -> Path:
    """A prepared dataset (``_info.json``, tree, train and validation shards) of random-label JPEGs."""
    from multiprocessing import get_context

    from in21k.dataset import DatasetWriter
    from in21k.tree import SemanticTree

    root = Path(root)
    tree = SemanticTree.load(tree_name)
    writer = DatasetWriter(str(root))
    writer.write_tree(tree, miil=False)
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n_img, n_shards in (("train", images, shards), ("validation", max(images // 20, 64), 4)):
        (root / split).mkdir(parents=True, exist_ok=True)
        per = np.array_split(rng.integers(0, tree.num_classes, size=n_img), n_shards)
        jobs = [
            (str(root / split / f"bench-{split}-{i:06d}.tar"), p.tolist(), image_size, seed * 7919 + i)
            for i, p in enumerate(per)
        ]
        with get_context("fork").Pool(workers or os.cpu_count()) as pool:
            done = pool.map(_bench_shard, jobs)
        splits[split] = [(f"{split}/{name}", n) for name, n in done]
    writer.write_info(
        num_classes=tree.num_classes,
        splits=splits,
        name="in21k-bench",
        config={"bench": True, "image_size": image_size},
    )
    return root
