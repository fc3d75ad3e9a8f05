"""Small prepared datasets in the layout `in21k prepare` writes, for tests of the loader and the trainer.

``make_prepared_dataset`` writes real JPEG bytes into real WebDataset tars (``<key>.jpg``, ``<key>.cls``,
``<key>.json``), an ``_info.json`` in timm's wds-reader format, and a ``tree.json`` built from real
WordNet 3.0 (``SemanticTree.build``), all through ``in21k.dataset`` as ``prepare`` writes them. Each class
has its own base colour so a tiny model can learn it.

Import from any test folder with ``from tests.loaders.prepared_data import make_prepared_dataset``.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Real WordNet 3.0 noun wnids: two fish, a dog chain (dog > working dog > German shepherd; dog > toy dog
# > Chihuahua), birds, cats, frogs. Taken in this order when fewer classes are asked for; the class
# index is the position in the *sorted* list (class indices follow the sorted wnids, as timm's lists do).
WNIDS: tuple[str, ...] = (
    "n01440764",  # tench
    "n01443537",  # goldfish
    "n02084071",  # dog
    "n02085620",  # Chihuahua
    "n02103406",  # working dog
    "n02106662",  # German shepherd
    "n01503061",  # bird
    "n01530575",  # brambling
    "n02121808",  # domestic cat
    "n02123045",  # tabby
    "n01639765",  # frog
    "n02085374",  # toy dog
    "n01531178",  # goldfinch
    "n02124075",  # Egyptian cat
    "n01641577",  # bullfrog
    "n02110185",  # Siberian husky
)


def class_colour(index: int) -> tuple[int, int, int]:
    """A distinct, deterministic base colour per class index."""
    rng = np.random.default_rng(1000 + index)
    return tuple(int(v) for v in rng.integers(30, 226, size=3))


def jpeg_bytes(rng: np.random.Generator, colour: Sequence[int], width: int, height: int, quality: int = 90) -> bytes:
    """Encode a real JPEG: the class colour, a random bright square and mild noise."""
    from PIL import Image

    img = np.empty((height, width, 3), dtype=np.int16)
    img[:] = np.asarray(colour, dtype=np.int16)
    img += rng.integers(-20, 21, size=(height, width, 3), dtype=np.int16)
    s = max(1, min(width, height) // 3)
    y, x = int(rng.integers(0, height - s + 1)), int(rng.integers(0, width - s + 1))
    img[y : y + s, x : x + s] = 255 - np.asarray(colour, dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_shard(path: Path, samples: Sequence[dict]) -> list[int]:
    """Write one WebDataset tar; ``samples`` are ``{"__key__", "jpg", "cls", "json"}`` with bytes values. Returns
    the samples' byte offsets."""
    from in21k.dataset import write_samples

    path.parent.mkdir(parents=True, exist_ok=True)
    return write_samples(str(path), ((s["__key__"], {k: v for k, v in s.items() if k != "__key__"}) for s in samples))


def make_prepared_dataset(
    root: str | Path,
    *,
    num_classes: int,
    shard_lengths_train: Sequence[int],
    shard_lengths_val: Sequence[int],
    image_size: int | tuple[int, int],
    seed: int,
    corrupt_keys: Sequence[str] = (),
    stats: bool = True,
) -> Path:
    """Write a prepared dataset under ``root`` and return ``root``.

    ``image_size`` is the stored size (an int for square images, or ``(width, height)``); samples go to
    classes round-robin; keys are ``<wnid>_<NNNN>`` unique over both splits, in shard order.
    ``corrupt_keys``: samples whose ``.jpg`` is replaced by truncated bytes (for bad-data tests). ``stats``: write
    each shard's stats file with its sample offsets, as ``prepare`` does (without: a dataset of another tool).
    """
    from in21k.dataset import DatasetWriter
    from in21k.tree import SemanticTree

    if not 1 <= num_classes <= len(WNIDS):
        raise ValueError(f"num_classes must be in 1..{len(WNIDS)} (the built-in real wnids), got {num_classes}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    width, height = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    wnids = sorted(WNIDS[:num_classes])
    tree = SemanticTree.build(wnids)
    writer = DatasetWriter(str(root))
    writer.write_tree(tree, miil=False)
    rng = np.random.default_rng(seed)
    corrupt = set(corrupt_keys)
    counters = [0] * num_classes
    next_class = 0
    splits: dict[str, list[tuple[str, int]]] = {}
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for split, lengths in (("train", shard_lengths_train), ("validation", shard_lengths_val)):
        splits[split] = []
        for shard_index, length in enumerate(lengths):
            samples = []
            for _ in range(int(length)):
                c = next_class % num_classes
                next_class += 1
                counters[c] += 1
                counts[wnids[c]][split] += 1
                key = f"{wnids[c]}_{counters[c]:04d}"
                data = jpeg_bytes(rng, class_colour(c), width, height)
                if key in corrupt:
                    data = data[: len(data) // 3]
                meta = {
                    "wnid": wnids[c],
                    "class": c,
                    "source": f"{wnids[c]}.tar/{key}.JPEG",
                    "orig_size": [width, height],
                }
                samples.append({"__key__": key, "jpg": data, "cls": str(c).encode(), "json": json.dumps(meta).encode()})
            name = f"{split}/in21k-{split}-{shard_index:06d}.tar"
            offsets = write_shard(root / name, samples)
            if stats:
                writer.write_stats(split, shard_index, {"num_samples": len(offsets), "offsets": offsets})
            splits[split].append((name, int(length)))
    writer.write_info(
        num_classes=num_classes,
        splits=splits,
        name="imagenet-21k-p-test",
        config={"image_size": [width, height], "seed": seed},
    )
    writer.write_classes(tree, counts)
    return root


def all_keys(root: str | Path, split: str) -> list[str]:
    """Every sample key of ``split`` in shard order (reads the tars with ``tarfile``, not ``_info.json``'s lengths)."""
    from in21k.dataset import PreparedDataset

    keys = []
    for shard in PreparedDataset.open(str(root)).shards(split):
        with tarfile.open(shard.url) as tar:
            keys.extend(m.name.rsplit(".", 1)[0] for m in tar.getmembers() if m.name.endswith(".cls"))
    return keys
