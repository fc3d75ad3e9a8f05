"""The loader on local disk: pixels, labels, coverage, transforms, options and their errors."""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from in21k.dataset import DatasetWriter, PreparedDataset
from in21k.loaders import create_loader
from tests.loaders.loader_helpers import VAL_LENGTHS, batch_keys, digest, key_by_digest
from tests.loaders.prepared_data import make_prepared_dataset


def test_cpu_decode_matches_stored_jpeg_and_labels(prepared: Path) -> None:
    kw = dict(data=str(prepared), split="validation", batch_size=4, num_workers=0, image_size=32)
    raw = create_loader(**kw, decode="none")
    cpu = create_loader(**kw, decode="cpu")
    assert len(raw) == len(cpu)
    info = json.loads((prepared / "_info.json").read_text())
    assert cpu.num_classes == info["num_classes"] == 6
    assert cpu.mean == (0.0, 0.0, 0.0) and cpu.std == (1.0, 1.0, 1.0)
    table = key_by_digest(prepared, "validation")
    for (jpegs, labels_raw), (images, labels) in zip(raw, cpu, strict=True):
        assert images.dtype == torch.uint8 and images.shape == (4, 3, 32, 32)
        assert torch.equal(labels, labels_raw) and labels.dtype == torch.int64
        for jpeg, image, label in zip(jpegs, images, labels, strict=True):
            stored = np.asarray(Image.open(io.BytesIO(jpeg.numpy().tobytes())).convert("RGB"))
            assert np.array_equal(image.permute(1, 2, 0).numpy(), stored)  # stored size: no resize at all
            wnid = table[digest(jpeg.numpy().tobytes())].split("_")[0]
            assert label == sorted(info_wnids(prepared)).index(wnid)


def info_wnids(root: Path) -> list[str]:
    return [line.split("\t")[1] for line in (root / "classes.tsv").read_text().splitlines()[1:]]


def test_evaluation_yields_every_sample_at_least_once(prepared: Path) -> None:
    loader = create_loader(data=str(prepared), split="validation", batch_size=4, num_workers=2, decode="none")
    keys = [k for batch in batch_keys(loader, key_by_digest(prepared, "validation")) for k in batch]
    stats = loader.epoch_stats()
    assert set(keys) == set(key_by_digest(prepared, "validation").values())
    assert len(keys) == len(loader) * 4 == sum(VAL_LENGTHS) + stats["repeated"]
    assert stats["dropped"] == 0 and stats["samples"] == len(keys) and stats["shards_read"] >= len(VAL_LENGTHS)
    # Evaluation does not shuffle: a second pass is identical.
    assert [k for b in batch_keys(loader, key_by_digest(prepared, "validation")) for k in b] == keys


def test_miil_train_transform_is_uint8_augmented_and_deterministic(prepared: Path) -> None:
    kw = dict(data=str(prepared), split="train", batch_size=4, num_workers=2, seed=3, image_size=32)
    train = create_loader(**kw)
    first = [images.clone() for images, _ in train]
    again = [images.clone() for images, _ in train]
    assert all(
        torch.equal(a, b) for a, b in zip(first, again, strict=True)
    )  # augmentation seeded per (seed, epoch, batch)
    assert first[0].dtype == torch.uint8 and first[0].shape == (4, 3, 32, 32)
    plain = create_loader(**kw, transform="eval")  # same order, no augmentation
    diffs = [not torch.equal(a, b) for (a, _), b in zip(plain, first, strict=True)]
    assert sum(diffs) == len(diffs)


def test_timm_preset_keeps_uint8_and_hands_mean_std(prepared: Path) -> None:
    from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    for train in (True, False):
        loader = create_loader(
            data=str(prepared), split="train", batch_size=4, num_workers=0, transform="timm", image_size=24, train=train
        )
        images, labels = next(iter(loader))
        assert images.dtype == torch.uint8 and images.shape == (4, 3, 24, 24)
        assert loader.mean == tuple(IMAGENET_DEFAULT_MEAN) and loader.std == tuple(IMAGENET_DEFAULT_STD)
        names = [type(t).__name__ for t in loader.transform.steps]
        assert not {"MaybeToTensor", "ToTensor", "Normalize", "RandomErasing"} & set(names)


def test_squash_of_larger_stored_images(tmp_path: Path) -> None:
    root = make_prepared_dataset(
        tmp_path / "big",
        num_classes=3,
        shard_lengths_train=[4, 4],
        shard_lengths_val=[2],
        image_size=(96, 64),
        seed=1,
    )
    loader = create_loader(data=str(root), split="train", batch_size=4, num_workers=0, image_size=40, transform="eval")
    batches = list(loader)
    assert [b[0].shape for b in batches] == [(4, 3, 40, 40)] * 2


def test_fewer_shards_than_readers_caps_workers_with_one_log_line(prepared: Path, caplog) -> None:
    with caplog.at_level("INFO", logger="in21k.loaders.loader"):
        loader = create_loader(
            data=str(prepared), split="validation", batch_size=2, num_workers=3, rank=0, world_size=2
        )
    assert loader.spec.num_workers == 2  # 4 shards over 2 ranks: 2 workers per rank, each on a shard of its own
    lines = [r.getMessage() for r in caplog.records if "loader worker(s) per rank" in r.getMessage()]
    assert lines == ["split 'validation': 4 shard(s) for 2 rank(s): 2 loader worker(s) per rank instead of 3"]


def test_bad_options(prepared: Path) -> None:
    with pytest.raises(ValueError, match="no split 'val'.*train, validation"):
        create_loader(data=str(prepared), split="val", batch_size=2, num_workers=0)
    with pytest.raises(ValueError, match="lower the batch size"):
        create_loader(data=str(prepared), split="train", batch_size=100, num_workers=0)
    with pytest.raises(ValueError, match="unknown transform"):
        create_loader(data=str(prepared), split="train", batch_size=2, num_workers=0, transform="bogus")
    with pytest.raises(FileNotFoundError, match="_info.json"):
        create_loader(data=str(prepared / "nowhere"), split="train", batch_size=2, num_workers=0)
    loader = create_loader(data=str(prepared), split="train", batch_size=4, num_workers=0)
    with pytest.raises(ValueError, match="start_step must be in 0..13"):
        loader.set_epoch(0, start_step=14)


def test_pipe_urls_need_opt_in(prepared: Path, tmp_path: Path) -> None:
    root = tmp_path / "piped"
    shutil.copytree(prepared, root)
    ds = PreparedDataset.open(str(root))
    splits = {name: list(zip(e["filenames"], e["shard_lengths"], strict=True)) for name, e in ds.info["splits"].items()}
    splits["validation"] = [(f"pipe:cat {root}/{name}", n) for name, n in splits["validation"]]
    DatasetWriter(str(root)).write_info(num_classes=ds.num_classes, splits=splits)
    with pytest.raises(ValueError, match="refusing to run it.*allow_pipe=True"):
        create_loader(data=str(root), split="validation", batch_size=4, num_workers=0)
    piped = create_loader(
        data=str(root), split="validation", batch_size=4, num_workers=0, allow_pipe=True, decode="none"
    )
    plain = create_loader(data=str(prepared), split="validation", batch_size=4, num_workers=0, decode="none")
    table = key_by_digest(prepared, "validation")
    assert batch_keys(piped, table) == batch_keys(plain, table)


def test_same_samples_whatever_the_worker_count(prepared: Path) -> None:
    """Per rank the sample multiset depends on the plan only; order within is deterministic per config."""
    table = key_by_digest(prepared, "validation")
    counts = []
    for workers in (1, 2):
        loader = create_loader(data=str(prepared), split="validation", batch_size=2, num_workers=workers, decode="none")
        counts.append(Counter(k for b in batch_keys(loader, table) for k in b))
    assert set(counts[0]) == set(counts[1]) == set(table.values())


def test_timm_augmentation_is_reproducible_and_resumable(prepared: Path) -> None:
    kw = dict(data=str(prepared), split="train", batch_size=4, num_workers=2, transform="timm", image_size=24, seed=1)
    loader = create_loader(**kw)
    loader.set_epoch(2)
    full = [images.clone() for images, _ in loader]
    loader.set_epoch(2, start_step=5)
    resumed = [images.clone() for images, _ in loader]
    assert len(resumed) == len(full) - 5
    assert all(torch.equal(a, b) for a, b in zip(resumed, full[5:], strict=True))  # the same augmented pixels
