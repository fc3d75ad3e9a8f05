"""Class folders (``ROOT/train/<class>/*.jpg``, ``ROOT/val/<class>/*``) as a loader with the streaming
loader's interface: ``set_epoch(epoch, start_step)``, ``len``, batches of ``(uint8 [B,3,H,W], labels)``,
``state_dict``/``load_state_dict`` and ``epoch_stats`` (what the training engine asks of a training loader).

For ``in21k finetune`` on datasets that were never prepared (ImageNet-1K's usual layout). Classes are the
sorted folder names of ``train/``; ``val/`` (or ``validation/``) must not add classes.

Training: one permutation per epoch (the same on every rank, from ``(seed, epoch)``), dealt round-robin
to the ranks and cut so that every rank gets the same number of full batches. Evaluation: every
``world_size``-th file from ``rank`` on, nothing dropped or repeated (counts are summed over ranks).
Each sample's augmentation is seeded from ``(seed, epoch, rank, position)``, so a run resumed at a step
sees exactly the pixels an uninterrupted one would, whatever the worker count. The order is a function of
``(seed, epoch)`` only, so the loader has no state of its own to checkpoint: the engine's position (epoch,
batch) is enough to resume.
"""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path
from typing import Any

import numpy as np

from in21k.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
VAL_SPLITS = ("val", "validation")


def scan_class_folders(
    root: Path, split: str, classes: list[str] | None = None
) -> tuple[list[str], list[tuple[str, int]]]:
    """``(classes, [(file, label)])`` of ``root/split/<class>/*`` (classes: sorted folder names unless given)."""
    base = root / split
    if not base.is_dir():
        raise DataError(f"{base} is not a folder: class folders must be ROOT/train/<class>/ and ROOT/val/<class>/")
    found = sorted(p.name for p in base.iterdir() if p.is_dir())
    if classes is None:
        classes = found
    elif unknown := sorted(set(found) - set(classes)):
        raise DataError(f"{base} has class folders that train/ lacks: {', '.join(unknown[:10])}")
    if not classes:
        raise DataError(f"{base} holds no class folder")
    label = {c: i for i, c in enumerate(classes)}
    files = [
        (str(f), label[c])
        for c in found
        for f in sorted((base / c).rglob("*"))
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise DataError(f"{base} holds no image files")
    return classes, files


def val_split_of(root: Path) -> str:
    split = next((s for s in VAL_SPLITS if (root / s).is_dir()), None)
    if split is None:
        raise DataError(f"{root} has no val/ (or validation/) folder next to train/")
    return split


def _sample_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([abs(int(p)) for p in parts]).generate_state(1)[0])


class _FolderDataset:
    """Map-style dataset of ``(file index, seed)`` -> ``(uint8 HWC, label)``, or ``None`` for a bad image."""

    def __init__(self, files: list[tuple[str, int]], transform: Any) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int]):
        import torch

        from in21k.loaders.transforms import CorruptImageError

        i, seed = item
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.default_generator.manual_seed(seed)
        path, label = self.files[i]
        try:
            return self.transform(Path(path).read_bytes()), label
        except CorruptImageError as exc:
            log.debug("skipping %s: %s", path, exc)
            return None  # counted by the collate function


def _collate(items: list) -> tuple[Any, Any, int]:
    import torch

    good = [it for it in items if it is not None]
    if not good:
        return torch.empty(0, 3, 1, 1, dtype=torch.uint8), torch.empty(0, dtype=torch.long), len(items)
    images = torch.from_numpy(np.stack([arr for arr, _ in good])).permute(0, 3, 1, 2)
    return images, torch.tensor([lab for _, lab in good], dtype=torch.long), len(items) - len(good)


class FolderLoader:
    """Batches ``(uint8 [B,3,H,W], labels)`` of this rank's part of a class-folder split (module docstring)."""

    def __init__(
        self,
        files: list[tuple[str, int]],
        *,
        transform: Any,
        batch_size: int,
        num_workers: int,
        seed: int,
        train: bool,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.dataset = _FolderDataset(files, transform)
        self.batch_size, self.num_workers, self.seed, self.train = batch_size, num_workers, seed, train
        self.rank, self.world_size = rank, world_size
        self.epoch = self.start_step = 0
        self.corrupt = 0  # undecodable images skipped in the current (or last) epoch

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def state_dict(self, *, epoch: int, step: int) -> None:
        """Nothing beyond the engine's position: the order is a function of ``(seed, epoch)``."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise DataError(
            "the checkpoint holds the streaming loader's position of a prepared dataset, but --data is now a class "
            "folder tree: resume with the --data the run was started with"
        )

    def epoch_stats(self) -> dict[str, Any]:
        """This rank's count of undecodable training images skipped in the current (or last) epoch."""
        return {"corrupt_skipped": self.corrupt}

    def __len__(self) -> int:
        n = len(self.dataset)
        if self.train:
            return (n // self.world_size) // self.batch_size
        return math.ceil(len(range(self.rank, n, self.world_size)) / self.batch_size)

    def indices(self) -> list[int]:
        """This rank's file indices of the current epoch, in order (the whole epoch, before ``start_step``)."""
        import torch

        n = len(self.dataset)
        if not self.train:
            return list(range(self.rank, n, self.world_size))
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch))
        return order[self.rank :: self.world_size][: len(self) * self.batch_size].tolist()

    def __iter__(self):
        import torch

        skip = self.start_step * self.batch_size
        self.corrupt = 0
        self.start_step = 0  # a finished (or abandoned) resumed epoch must not make the next one start mid-way
        items = [(i, _sample_seed(self.seed, self.epoch, self.rank, p)) for p, i in enumerate(self.indices())][skip:]
        dl = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=items,
            drop_last=self.train,
            num_workers=self.num_workers,
            collate_fn=_collate,
        )
        for images, labels, bad in dl:
            self.corrupt += bad
            if len(labels):
                yield images, labels
