"""Our shards and webdataset's are one format: webdataset reads ours, and our loader reads shards written with
``webdataset.TarWriter`` (the format's reference library, a test dependency only)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from in21k.dataset import DatasetWriter, PreparedDataset
from in21k.loaders import create_loader
from tests.loaders.loader_helpers import batch_keys, key_by_digest
from tests.loaders.prepared_data import class_colour, jpeg_bytes

wds = pytest.importorskip("webdataset")


def test_webdataset_reads_our_shards_sample_for_sample(prepared: Path) -> None:
    ds = PreparedDataset.open(str(prepared))
    urls = [s.url for s in ds.shards("train")]
    theirs = [(s["__key__"], s["jpg"], int(s["cls"])) for s in wds.WebDataset(urls, shardshuffle=False)]
    ours = create_loader(
        data=str(prepared), split="train", batch_size=1, num_workers=0, decode="none", train=False, interleave=1
    )  # one shard after the other, as webdataset reads them
    table = key_by_digest(prepared, "train")
    keys = [k for batch in batch_keys(ours, table) for k in batch]
    assert [k for k, _, _ in theirs] == keys  # the same samples, grouped by the same key rule, in shard order
    labels = [int(y) for _, y in ours]
    assert [c for _, _, c in theirs] == labels


def test_our_loader_reads_webdataset_tarwriter_shards(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    written: dict[str, tuple[bytes, int]] = {}
    shards = []
    for shard in range(4):
        name = f"train/wds-{shard:04d}.tar"
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        with wds.TarWriter(str(tmp_path / name)) as sink:
            for i in range(5):
                label = (shard + i) % 3
                key = f"s{shard}_{i:03d}"
                jpg = jpeg_bytes(rng, class_colour(label), 16, 16)
                sink.write({"__key__": key, "jpg": jpg, "cls": label, "json": {"note": "written by webdataset"}})
                written[key] = (jpg, label)
        shards.append((name, 5))
    DatasetWriter(str(tmp_path)).write_info(num_classes=3, splits={"train": shards, "validation": shards[:1]})
    loader = create_loader(data=str(tmp_path), split="train", batch_size=5, num_workers=2, train=False, image_size=16)
    seen = 0
    by_pixels = {np.asarray(Image.open(io.BytesIO(j)).convert("RGB")).tobytes(): c for j, c in written.values()}
    for images, labels in loader:
        for image, label in zip(images, labels, strict=True):
            assert by_pixels[image.permute(1, 2, 0).contiguous().numpy().tobytes()] == int(label)
            seen += 1
    assert seen == 20 and loader.epoch_stats()["corrupt_skipped"] == 0
