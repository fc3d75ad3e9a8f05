"""The plan: balanced shard split, equal steps on every rank, lane arithmetic, and exact resume at any step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from in21k.loaders import Shard, create_loader, plan_epoch
from in21k.loaders.pipeline import interleave
from in21k.loaders.splitting import balanced_split, lane_consumed
from tests.loaders.loader_helpers import batch_keys, key_by_digest


def shards_of(lengths: list[int]) -> list[Shard]:
    return [Shard(i, f"shard-{i}.tar", n) for i, n in enumerate(lengths)]


@pytest.mark.parametrize("seed", range(20))
def test_every_rank_gets_the_same_steps_and_every_shard_once(seed: int) -> None:
    rng = np.random.default_rng(seed)
    world, workers, batch = int(rng.integers(1, 5)), int(rng.integers(1, 4)), int(rng.integers(1, 9))
    lengths = [int(n) for n in rng.integers(1, 40, size=int(rng.integers(world * workers, 30)))]
    for train in (True, False):
        plan = plan_epoch(shards_of(lengths), world_size=world, num_workers=workers, batch_size=batch, seed=1,
                          epoch=seed, shuffle=train, train=train)  # fmt: skip
        seen = sorted(s.index for rank in plan.workers for w in rank for s in w.shards)
        assert seen == list(range(len(lengths)))  # each shard read by exactly one worker of one rank
        for rank in plan.workers:
            assert sum(w.batches for w in rank) == plan.steps  # equal steps on every rank
            assert all(w.shards for w in rank)
        yielded = plan.steps * batch * world
        assert yielded == sum(lengths) - plan.dropped + plan.repeated
        if train:
            assert plan.steps == sum(lengths) // (world * batch)
        else:
            assert plan.dropped == 0  # evaluation yields every sample


def test_balanced_split_keeps_counts_within_one_and_loads_close() -> None:
    parts = balanced_split([100, 1, 1, 1, 1, 1, 1, 1], 4)
    assert sorted(len(p) for p in parts) == [2, 2, 2, 2]
    parts = balanced_split([10] * 7 + [40], 2)
    loads = [sum(([10] * 7 + [40])[i] for i in p) for p in parts]
    assert sorted(len(p) for p in parts) == [4, 4] and max(loads) - min(loads) <= 40


@pytest.mark.parametrize("lengths", [[3, 1, 4], [5], [2, 2, 2], [0, 3, 1], [7, 1, 1, 6], [9, 3, 6]])
def test_lane_arithmetic_matches_round_robin(lengths: list[int]) -> None:
    def lanes(start: list[int]) -> list:
        return [iter([(i, j) for j in range(s, n)]) for i, (s, n) in enumerate(zip(start, lengths, strict=True))]

    full = list(interleave(lanes([0] * len(lengths))))
    for reads in range(sum(lengths) + 2):
        taken, next_lane = lane_consumed(lengths, reads)
        assert taken == [[lane for lane, _ in full[:reads]].count(i) for i in range(len(lengths))]
        # Resuming the round robin from that state continues exactly where the full run was.
        assert list(interleave(lanes(taken), first=next_lane)) == full[reads:]


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
@pytest.mark.parametrize("split", ["train", "validation"])
def test_resume_at_every_step_with_three_workers(prepared: Path, split: str) -> None:
    """Uneven worker batch counts, every rotation of the DataLoader's round robin, shuffle blocks and
    lane rounds cut mid-way, and (validation) wrap-around padding."""
    table = key_by_digest(prepared, split)
    loader = create_loader(data=str(prepared), split=split, batch_size=3, num_workers=3, seed=5, decode="none",
                           shuffle_block=7)  # fmt: skip
    loader.set_epoch(4)
    full = batch_keys(loader, table)
    assert len(full) == len(loader) and (len(loader) % 3 != 0 or split == "validation")
    for start in range(len(full) + 1):
        loader.set_epoch(4, start_step=start)
        assert batch_keys(loader, table) == full[start:], start
    assert loader.start_step == 0  # a resumed epoch does not leak into the next one
