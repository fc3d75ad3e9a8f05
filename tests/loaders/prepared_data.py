"""Small prepared datasets in the DESIGN layout, for tests of the loader and the trainer.

``make_prepared_dataset`` writes real JPEG bytes into real WebDataset tars (``<key>.jpg``, ``<key>.cls``,
``<key>.json``), an ``_info.json`` in timm's wds-reader format, and a ``tree.json`` built from real
WordNet 3.0 (``SemanticTree.build``). Each class has its own base colour so a tiny model can learn it.

Import from any test folder with ``from tests.loaders.prepared_data import make_prepared_dataset``.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Real WordNet 3.0 noun wnids: two fish, a dog chain (dog > working dog > German shepherd; dog > toy dog
# > Chihuahua), birds, cats, frogs. Taken in this order when fewer classes are asked for; the class
# index is the position in the *sorted* list (DESIGN: class indices = sorted wnids).
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

SCHEMA = "in21k.prepared/1"
MTIME = 1_600_000_000  # fixed tar header time (DESIGN: byte-identical shards)


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


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "in21k"
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: Path, samples: Sequence[dict]) -> None:
    """Write one WebDataset tar; ``samples`` are ``{"__key__", "jpg", "cls", "json"}`` with bytes values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            for ext in ("jpg", "cls", "json"):
                _add(tar, f"{s['__key__']}.{ext}", s[ext])


def make_prepared_dataset(
    root: str | Path,
    *,
    num_classes: int,
    shard_lengths_train: Sequence[int],
    shard_lengths_val: Sequence[int],
    image_size: int | tuple[int, int],
    seed: int,
    corrupt_keys: Sequence[str] = (),
) -> Path:
    """Write a prepared dataset under ``root`` and return ``root``.

    ``image_size`` is the stored size (an int for square images, or ``(width, height)``); samples go to
    classes round-robin; keys are ``<wnid>_<NNNN>`` unique over both splits, in shard order.
    ``corrupt_keys``: samples whose ``.jpg`` is replaced by truncated bytes (for bad-data tests).
    """
    import in21k  # noqa: F401  (fail early with a clear error when the package is not installed)
    from in21k.tree import SemanticTree

    if not 1 <= num_classes <= len(WNIDS):
        raise ValueError(f"num_classes must be in 1..{len(WNIDS)} (the built-in real wnids), got {num_classes}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    width, height = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    wnids = sorted(WNIDS[:num_classes])
    tree = SemanticTree.build(wnids)
    tree.save(root / "tree.json")
    rng = np.random.default_rng(seed)
    corrupt = set(corrupt_keys)
    counters = [0] * num_classes
    next_class = 0
    splits: dict[str, dict] = {}
    counts: dict[str, list[int]] = {"train": [0] * num_classes, "validation": [0] * num_classes}
    for split, lengths in (("train", shard_lengths_train), ("validation", shard_lengths_val)):
        filenames = []
        for shard_index, length in enumerate(lengths):
            samples = []
            for _ in range(int(length)):
                c = next_class % num_classes
                next_class += 1
                counters[c] += 1
                counts[split][c] += 1
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
            write_shard(root / name, samples)
            filenames.append(name)
        splits[split] = {
            "name": split,
            "filenames": filenames,
            "shard_lengths": [int(n) for n in lengths],
            "num_samples": int(sum(lengths)),
        }
    info = {
        "name": "imagenet-21k-p-test",
        "num_classes": num_classes,
        "splits": splits,
        "schema": SCHEMA,
        "tree": "tree.json",
        "config": {"image_size": [width, height], "seed": seed},
    }
    (root / "_info.json").write_text(json.dumps(info, indent=1))
    lines = ["index\twnid\tname\tlevel\ttrain_count\tval_count"]
    for c in tree.classes:
        lines.append(
            f"{c.index}\t{c.wnid}\t{c.name}\t{c.depth}\t{counts['train'][c.index]}\t{counts['validation'][c.index]}"
        )
    (root / "classes.tsv").write_text("\n".join(lines) + "\n")
    return root


def all_keys(root: str | Path, split: str) -> list[str]:
    """Every sample key of ``split`` in shard order (reads the tars, not ``_info.json``)."""
    root = Path(root)
    info = json.loads((root / "_info.json").read_text())
    keys = []
    for name in info["splits"][split]["filenames"]:
        with tarfile.open(root / name) as tar:
            keys.extend(m.name.rsplit(".", 1)[0] for m in tar.getmembers() if m.name.endswith(".cls"))
    return keys
