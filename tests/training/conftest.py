"""Fixtures shared by the training tests: a small 21K model, and ImageNet-style class folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from in21k.cli import main
from tests.loaders.prepared_data import class_colour, jpeg_bytes, make_prepared_dataset

IN_TREE = ["n01443537", "n02084071", "n02085620"]  # goldfish, dog, Chihuahua: classes of the 8-class 21K tree
NOT_IN_TREE = ["n02085374", "zz_not_a_wnid"]  # toy dog (a real wnid, not in that tree) and a plain name


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory) -> Path:
    """model.pt of a short 21K run (resnet10t, 32 px) on the first 8 real wnids."""
    root = tmp_path_factory.mktemp("ft21k")
    data = make_prepared_dataset(
        root / "data", num_classes=8, shard_lengths_train=[16, 16], shard_lengths_val=[8], image_size=32, seed=7
    )
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(root / "run"),
                "--model",
                "resnet10t",
                "--image-size",
                "32",
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--loader.num-workers",
                "0",
                "--amp",
                "none",
                "--no-plot",
                "--run.val-max-batches",
                "1",
            ]
        )
        == 0
    )
    return root / "run" / "model.pt"


@pytest.fixture(scope="session")
def folders(tmp_path_factory) -> Path:
    """ROOT/train/<class>/*.jpg and ROOT/val/<class>/*.jpg: 5 classes, 3 of them wnids of the 21K tree."""
    root = tmp_path_factory.mktemp("folders")
    rng = np.random.default_rng(1)
    for c, name in enumerate(sorted(IN_TREE + NOT_IN_TREE)):
        for split, n in (("train", 8), ("val", 2)):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                (root / split / name / f"{i}.jpg").write_bytes(jpeg_bytes(rng, class_colour(c), 36, 30))
    return root
