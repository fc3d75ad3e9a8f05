"""Bad data: corrupt samples and missing shards under the skip and raise policies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from in21k.errors import DataError
from in21k.loaders import create_loader
from tests.loaders.loader_helpers import batch_keys, key_by_digest
from tests.loaders.prepared_data import all_keys, make_prepared_dataset


@pytest.fixture(scope="module")
def corrupt_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    base = tmp_path_factory.mktemp("corrupt")
    clean = make_prepared_dataset(
        base / "clean", num_classes=4, shard_lengths_train=[6, 6], shard_lengths_val=[3, 3], image_size=16, seed=5
    )
    bad_key = all_keys(clean, "train")[2]
    root = make_prepared_dataset(
        base / "bad",
        num_classes=4,
        shard_lengths_train=[6, 6],
        shard_lengths_val=[3, 3],
        image_size=16,
        seed=5,
        corrupt_keys=[bad_key],
    )
    return root, bad_key


def test_corrupt_sample_is_counted_and_replaced(corrupt_root: tuple[Path, str]) -> None:
    root, bad_key = corrupt_root
    loader = create_loader(data=str(root), split="train", batch_size=4, num_workers=2, image_size=16)
    batches = list(loader)
    stats = loader.epoch_stats()
    assert stats["corrupt_skipped"] == 1 and stats["shard_errors"] == 0
    assert len(batches) == len(loader) == 3 and all(len(labels) == 4 for _, labels in batches)
    assert stats["samples"] == 12


def test_corrupt_sample_raises_under_raise_policy(corrupt_root: tuple[Path, str]) -> None:
    root, bad_key = corrupt_root
    loader = create_loader(data=str(root), split="train", batch_size=4, num_workers=0, image_size=16, corrupt="raise")
    with pytest.raises(DataError, match=f"corrupt sample '{bad_key}' of .*in21k-train-00000"):
        list(loader)


def test_missing_shard_raises_naming_the_url(prepared: Path, tmp_path: Path) -> None:
    root = tmp_path / "missing"
    shutil.copytree(prepared, root)
    gone = root / "validation" / "in21k-validation-000002.tar"
    kept = gone.read_bytes()
    gone.unlink()
    loader = create_loader(data=str(root), split="validation", batch_size=2, num_workers=2)  # raises by default
    first = iter(loader)
    next(first)
    workers = list(loader._dl._iterator._workers)
    with pytest.raises(DataError, match=f"cannot read shard {gone}"):
        list(first)
    # The failed epoch's workers are gone at once (not left to a garbage collection that waits for them), and
    # the loader reads the next epoch with new ones once the shard is back.
    assert not any(w.is_alive() for w in workers)
    gone.write_bytes(kept)
    assert len(list(loader)) == len(loader)


def test_missing_shard_skipped_keeps_step_count(prepared: Path, tmp_path: Path) -> None:
    root = tmp_path / "missing"
    shutil.copytree(prepared, root)
    gone = root / "validation" / "in21k-validation-000002.tar"  # 6 of 16 samples
    gone_keys = {table_key for table_key in key_by_digest_of_shard(gone)}
    gone.unlink()
    loader = create_loader(
        data=str(root), split="validation", batch_size=2, num_workers=2, decode="none", shard_errors="skip"
    )
    table = key_by_digest(prepared, "validation")
    keys = {k for b in batch_keys(loader, table) for k in b}
    stats = loader.epoch_stats()
    # Evaluation pads by wrapping around, so the missing shard may be tried more than once.
    assert stats["shard_errors"] >= 1 and stats["corrupt_skipped"] >= 6
    assert stats["batches"] == len(loader)
    assert set(table.values()) - keys == gone_keys  # exactly that shard's samples are missing


def key_by_digest_of_shard(path: Path) -> list[str]:
    import tarfile

    with tarfile.open(path) as tar:
        return [m.name[: -len(".jpg")] for m in tar.getmembers() if m.name.endswith(".jpg")]


def test_truncated_shard(prepared: Path, tmp_path: Path) -> None:
    root = tmp_path / "truncated"
    shutil.copytree(prepared, root)
    shard = root / "validation" / "in21k-validation-000000.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    loader = create_loader(data=str(root), split="validation", batch_size=2, num_workers=0)
    with pytest.raises(DataError, match=f"shard {shard}"):
        list(loader)
    skip = create_loader(data=str(root), split="validation", batch_size=2, num_workers=0, shard_errors="skip")
    assert len(list(skip)) == len(skip)
    assert skip.epoch_stats()["shard_errors"] == 1 and skip.epoch_stats()["corrupt_skipped"] >= 1
