"""The reused batch buffers of worker processes: a batch the consumer still holds is never overwritten,
released ones are reused, and an abandoned epoch does not leak them."""

from __future__ import annotations

from pathlib import Path

import torch

from in21k.loaders import create_loader


def _loader(prepared: Path):
    return create_loader(data=str(prepared), split="train", batch_size=4, num_workers=2, seed=4, image_size=16)


def test_held_batches_stay_intact_and_released_ones_are_reused(prepared: Path) -> None:
    loader = _loader(prepared)
    loader.set_epoch(1)
    released = [(images.clone(), labels.clone()) for images, labels in loader]  # each batch let go at once
    assert loader.epoch_stats()["fresh_buffers"] == 0  # every batch came from a reused ring slot
    loader.set_epoch(1)
    held = list(loader)  # keeps every batch alive: the ring runs out, later batches get fresh memory
    assert loader.epoch_stats()["fresh_buffers"] > 0
    assert len(held) == len(released) == len(loader)
    for (a, la), (b, lb) in zip(held, released, strict=True):
        assert a.dtype == torch.uint8 and a.shape == (4, 3, 16, 16) and lb.dtype == torch.int64
        assert torch.equal(a, b) and torch.equal(la, lb)  # nothing was overwritten while held
    del held
    loader.set_epoch(1)
    again = [(images.clone(), labels.clone()) for images, labels in loader]
    assert loader.epoch_stats()["fresh_buffers"] == 0  # the held slots came back when the batches were freed
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(again, released, strict=True))


def test_abandoned_epochs_do_not_leak_buffers(prepared: Path) -> None:
    loader = _loader(prepared)
    loader.set_epoch(0)
    reference = [images.clone() for images, _ in loader]
    for _ in range(4):  # each abandoned epoch leaves batches the DataLoader prefetched and then dropped
        loader.set_epoch(0)
        for _images, _labels in loader:
            break
    loader.set_epoch(0)
    after = [images.clone() for images, _ in loader]
    assert loader.epoch_stats()["fresh_buffers"] == 0
    assert all(torch.equal(a, b) for a, b in zip(after, reference, strict=True)) and len(after) == len(reference)
