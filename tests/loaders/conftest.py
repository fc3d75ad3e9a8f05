"""Fixtures of the loader tests: small prepared datasets written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.loaders.loader_helpers import TRAIN_LENGTHS, VAL_LENGTHS
from tests.loaders.prepared_data import make_prepared_dataset


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only prepared dataset: 6 classes, 8 train shards (52 samples), 4 validation shards, 32 px."""
    return make_prepared_dataset(
        tmp_path_factory.mktemp("prepared"),
        num_classes=6,
        shard_lengths_train=TRAIN_LENGTHS,
        shard_lengths_val=VAL_LENGTHS,
        image_size=32,
        seed=0,
    )
