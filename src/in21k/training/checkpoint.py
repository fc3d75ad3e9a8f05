"""Training checkpoints: atomic writes, keep the last K, find the newest, load with ``weights_only=True``.

A checkpoint is ``RUN_DIR/checkpoints/ckpt-<step>.pt`` (the names are ``training.rundir``'s): a dict of plain
data and tensors only (model, optimizer, scaler and EMA state dicts, the step, the loader position, the RNG
states), so loading needs no pickle of arbitrary objects. It is written to a temporary name, flushed to disk
and renamed, so a killed run leaves either the old set or the new file, never a half-written one.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from in21k.errors import ConfigError, DataError
from in21k.training.rundir import RunDir

log = logging.getLogger(__name__)


class CheckpointManager:
    """Checkpoints of one run directory."""

    def __init__(self, run_dir: str | Path | RunDir, *, keep_last: int = 3) -> None:
        if keep_last < 1:
            raise ConfigError(f"keep_last must be >= 1, got {keep_last}")
        self.run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.dir = self.run.checkpoints
        self.keep_last = keep_last

    def list(self) -> list[Path]:
        """Complete checkpoints, oldest first (by step)."""
        return self.run.list_checkpoints()

    def latest(self) -> Path | None:
        found = self.list()
        return found[-1] if found else None

    def save(self, state: dict[str, Any], step: int) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.run.checkpoint(step)
        atomic_save(state, path)
        for old in self.list()[: -self.keep_last]:
            old.unlink(missing_ok=True)
        return path

    def resolve(self, resume: str | None) -> Path | None:
        """``auto``: the newest checkpoint here or ``None``; a path: that file (which must exist)."""
        if not resume:
            return None
        if resume == "auto":
            return self.latest()
        path = Path(resume)
        if not path.is_file():
            raise ConfigError(f"--resume {resume!r}: no such checkpoint file (use --resume auto to pick the newest)")
        return path


def atomic_save(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:  # make the rename itself durable
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"checkpoint {path} cannot be loaded with weights_only=True: {exc}") from None


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states, as tensors and plain data."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
