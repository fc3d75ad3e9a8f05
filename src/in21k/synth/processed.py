"""Synthetic inputs of the other kinds users start from: the processed ImageNet-21K-P release, and a parquet set.

Both are made from a synthetic raw release the way the real ones were made from the real release:

- **processed** (``--layout processed``, or ``processed-tar-gz`` for the archive): the original's processing
  script applied to the raw members. Unreadable members are dropped ("general failure"); a readable image is
  squashed to ``--size`` x ``--size`` and written as a JPEG at quality 95, except one whose short side is under
  ``--size``, which is copied unchanged. A class with more than ``--min-images`` readable members goes to
  ``imagenet21k_train/`` with its first ``--val-per-class`` members in name order (``ls`` order) in
  ``imagenet21k_val/``; any other class to ``imagenet21k_small_classes/``. All under ``imagenet21k_resized/``
  (``PROCESSED_TOP``), with a ``README.txt`` beside the folders (a file outside the class folders).
- **parquet** (``--layout parquet``): that processed release's train and validation splits as parquet files in
  the common hub layout, ``data/train-0000K-of-0000N.parquet`` and ``data/validation-00000-of-00001.parquet``,
  rows shuffled: an ``image`` column of ``{"bytes", "path"}`` structs (``--image-format``: the JPEGs as they are,
  or re-encoded as WebP at ``--quality``) and a ``label`` column of class indices, with the class names (the
  wnids, sorted) in the files' ``huggingface`` metadata.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from in21k.errors import SetupError

PROCESSED_TOP = "imagenet21k_resized"
PROCESSED_ARCHIVE = "imagenet21k_resized.tar.gz"
TRAIN_DIR, VAL_DIR, SMALL_DIR = "imagenet21k_train", "imagenet21k_val", "imagenet21k_small_classes"
README = "README.txt"
TRAIN_FILES = 2  # train rows are spread over this many parquet files (a set of several files)
Release = dict[str, dict[str, list[tuple[str, bytes, bool]]]]  # folder -> wnid -> [(name, bytes, copied unchanged)]


def process_member(data: bytes, size: int) -> tuple[bytes, bool] | None:
    """The original script's treatment of one raw member: None (dropped), or (bytes, copied unchanged)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if min(img.size) < size:
                return data, True
            buf = io.BytesIO()
            img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR).save(buf, format="JPEG", quality=95)
            return buf.getvalue(), False
    except Exception:  # noqa: BLE001 - what the original printed as "general failure" and dropped
        return None


def processed_release(
    classes: dict[str, list[tuple[str, bytes]]], *, size: int, min_images: int, val_per_class: int
) -> Release:
    """folder -> wnid -> [(name, bytes, copied unchanged)] for the raw members of each class."""
    out: Release = {TRAIN_DIR: {}, VAL_DIR: {}, SMALL_DIR: {}}
    for wnid, members in sorted(classes.items()):
        kept = []
        for name, data in sorted(members):
            done = process_member(data, size)
            if done is not None:
                kept.append((name, done[0], done[1]))
        if not kept:
            continue
        if len(kept) > min_images:
            out[VAL_DIR][wnid] = kept[:val_per_class]
            out[TRAIN_DIR][wnid] = kept[val_per_class:]
        else:
            out[SMALL_DIR][wnid] = kept
    return out


def _tar_of_tree(files: list[tuple[str, bytes]]) -> bytes:
    """A tar of ``(path, bytes)`` files with their folders, fixed headers (the same seed gives the same bytes)."""
    buf = io.BytesIO()
    folders: set[str] = set()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path, data in files:
            parts = path.split("/")
            for k in range(1, len(parts)):
                folder = "/".join(parts[:k])
                if folder not in folders:
                    folders.add(folder)
                    info = tarfile.TarInfo(folder)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1609459200
                    tar.addfile(info)
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, 1609459200
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_processed(out: Path, release: Release, *, archive: bool) -> list[str]:
    """Write the processed release as folders under ``out/PROCESSED_TOP`` or as ``out/PROCESSED_ARCHIVE``."""
    import gzip

    files = [(f"{PROCESSED_TOP}/{README}", b"Synthetic ImageNet-21K-P (in21k synth), processed layout.\n")]
    for folder in (TRAIN_DIR, VAL_DIR, SMALL_DIR):
        for wnid, members in sorted(release[folder].items()):
            files += [(f"{PROCESSED_TOP}/{folder}/{wnid}/{name}", data) for name, data, _ in members]
    if archive:
        (out / PROCESSED_ARCHIVE).write_bytes(gzip.compress(_tar_of_tree(files), compresslevel=1, mtime=0))
        return [PROCESSED_ARCHIVE]
    for path, data in files:
        target = out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return [PROCESSED_TOP]


def _webp(data: bytes, quality: int) -> bytes:
    from PIL import features

    if not features.check("webp"):
        raise SetupError(
            "this Pillow cannot write WebP (built without libwebp): install Debian's libwebp-dev and rebuild "
            "Pillow (`make install` does both), or use --image-format jpeg"
        )
    buf = io.BytesIO()
    with Image.open(io.BytesIO(data)) as img:
        img.convert("RGB").save(buf, format="WEBP", quality=quality)
    return buf.getvalue()


def write_parquet(out: Path, release: Release, *, image_format: str, quality: int, seed: int) -> list[str]:
    """The train and validation splits as hub-layout parquet files under ``out/data``; returns their names."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = sorted(set(release[TRAIN_DIR]) | set(release[VAL_DIR]))
    label_of = {w: i for i, w in enumerate(names)}
    features = {"image": {"_type": "Image"}, "label": {"_type": "ClassLabel", "names": names}}
    metadata = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    rng = np.random.default_rng(seed)
    written = []
    (out / "data").mkdir(parents=True, exist_ok=True)
    for split, folder in (("train", TRAIN_DIR), ("validation", VAL_DIR)):
        rows = [(w, name, data) for w, members in sorted(release[folder].items()) for name, data, _ in members]
        rows = [rows[i] for i in rng.permutation(len(rows))]
        count = TRAIN_FILES if split == "train" and len(rows) >= TRAIN_FILES else 1
        for k, part in enumerate(np.array_split(np.arange(len(rows)), count)):
            images, labels = [], []
            for i in part.tolist():
                wnid, name, data = rows[i]
                if image_format == "webp":
                    data, name = _webp(data, quality), name.rsplit(".", 1)[0] + ".webp"
                images.append({"bytes": data, "path": name})
                labels.append(label_of[wnid])
            table = pa.table({"image": pa.array(images, image_type), "label": pa.array(labels, pa.int64())})
            table = table.replace_schema_metadata(metadata)
            name = f"data/{split}-{k:05d}-of-{count:05d}.parquet"
            pq.write_table(table, out / name, row_group_size=64)
            written.append(name)
    return written


def report_of(release: Release, kinds: dict[str, dict[str, str]]) -> dict[str, Any]:
    """What the processed release holds, member by member: folder, raw kind, copied unchanged or resized."""
    out: dict[str, Any] = {}
    for folder, split in ((TRAIN_DIR, "train"), (VAL_DIR, "validation"), (SMALL_DIR, "small_classes")):
        for wnid, members in release[folder].items():
            for name, _, copied in members:
                out.setdefault(wnid, {})[name] = {"split": split, "kind": kinds[wnid][name], "copied": copied}
    return out
