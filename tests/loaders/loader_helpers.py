"""Test helpers: identify samples by the hash of their JPEG bytes (``decode="none"`` yields the stored bytes)."""

from __future__ import annotations

import hashlib
import socket
import tarfile
from pathlib import Path

# Unequal shard lengths on purpose: the equal-steps rule must hold whatever they are.
TRAIN_LENGTHS = [7, 5, 9, 3, 6, 8, 4, 10]
VAL_LENGTHS = [5, 3, 6, 2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digest(data) -> str:
    return hashlib.sha1(bytes(data)).hexdigest()[:16]


def key_by_digest(root: str | Path, split: str) -> dict[str, str]:
    """sha1 of each stored ``.jpg`` -> its sample key."""
    from in21k.dataset import PreparedDataset

    out = {}
    for shard in PreparedDataset.open(str(root)).shards(split):
        with tarfile.open(shard.url) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".jpg"):
                    out[digest(tar.extractfile(m).read())] = m.name[: -len(".jpg")]
    return out


def batch_keys(loader, table: dict[str, str]) -> list[list[str]]:
    """Iterate a ``decode="none"`` loader once; the sample keys of each batch."""
    return [[table[digest(img.numpy().tobytes())] for img in images] for images, _ in loader]
