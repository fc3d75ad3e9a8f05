"""Checkpoint files: atomic, keep-last-K, newest wins, weights_only round trip including RNG states."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from in21k.training.checkpoint import CheckpointManager, load_checkpoint, rng_state, set_rng_state


def test_keep_last_and_latest(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    assert mgr.latest() is None and mgr.resolve("auto") is None
    for step in (5, 10, 100):
        mgr.save({"step": step, "w": torch.full((2,), float(step))}, step)
    (mgr.dir / ".ckpt-000000200.pt.tmp-1").write_bytes(b"half written")  # a killed save is ignored
    names = [p.name for p in mgr.list()]
    assert names == ["ckpt-000000010.pt", "ckpt-000000100.pt"]
    state = load_checkpoint(mgr.resolve("auto"))
    assert state["step"] == 100 and torch.equal(state["w"], torch.full((2,), 100.0))
    with pytest.raises(ValueError, match="--resume auto"):
        mgr.resolve(str(tmp_path / "nope.pt"))


def test_rng_states_round_trip_weights_only(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    mgr = CheckpointManager(tmp_path)
    mgr.save({"rng": rng_state()}, 1)
    want = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(load_checkpoint(mgr.latest())["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == want[0] and got[1] == want[1] and torch.equal(got[2], want[2])
