"""The plan: every sample exactly once, equal steps on every rank, lane arithmetic, exact resume at any step."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from in21k.loaders import Shard, create_loader, plan_epoch
from in21k.loaders.pipeline import interleave
from in21k.loaders.splitting import Segment, lane_consumed, remaining
from tests.loaders.loader_helpers import batch_keys, key_by_digest


def shards_of(lengths: list[int]) -> list[Shard]:
    return [Shard(i, f"shard-{i}.tar", n) for i, n in enumerate(lengths)]


def samples_of(ranges) -> list[tuple[int, int]]:
    return [(r.shard.index, i) for r in ranges for i in range(r.start, r.stop)]


@pytest.mark.parametrize("seed", range(20))
def test_every_rank_gets_the_same_steps_and_every_sample_once(seed: int) -> None:
    rng = np.random.default_rng(seed)
    world, workers, batch = int(rng.integers(1, 6)), int(rng.integers(1, 4)), int(rng.integers(1, 9))
    # Any number of shards, fewer than ranks x workers included (down to one).
    lengths = [int(n) for n in rng.integers(1, 40, size=int(rng.integers(1, 30)))]
    total = sum(lengths)
    for train in (True, False):
        plan = plan_epoch(
            shards_of(lengths),
            world_size=world,
            num_workers=workers,
            batch_size=batch,
            seed=1,
            epoch=seed,
            shuffle=train,
        )
        seen = sorted(x for rank in plan.workers for w in rank for x in samples_of(w.ranges))
        assert seen == [(i, j) for i, n in enumerate(lengths) for j in range(n)]  # each sample exactly once
        assert plan.steps == math.ceil(math.ceil(total / world) / batch)
        for rank in plan.workers:
            assert sum(w.batches for w in rank) == plan.steps  # equal steps on every rank
            assert all(w.read_ranges for w in rank if w.batches)  # a worker with batches has something to read
        assert plan.steps * batch * world == total + plan.repeated and plan.dropped == 0
        assert (
            max(sum(w.samples for w in r) for r in plan.workers) - min(sum(w.samples for w in r) for r in plan.workers)
            <= 1
        )


@pytest.mark.parametrize("seed", range(12))
def test_unseen_samples_after_any_segments(seed: int) -> None:
    """After segments of other configurations, what is left plus what they yielded is the epoch, once each."""
    rng = np.random.default_rng(100 + seed)
    lengths = [int(n) for n in rng.integers(1, 30, size=int(rng.integers(1, 12)))]
    shards = shards_of(lengths)
    kw = dict(
        seed=3,
        epoch=seed,
        shuffle=bool(seed % 2),
        interleave=int(rng.integers(1, 4)),
        shuffle_block=int(rng.integers(2, 9)),
    )
    history: list[Segment] = []
    left = remaining(shards, **kw)
    for _ in range(3):
        world, workers, batch = int(rng.integers(1, 5)), int(rng.integers(1, 4)), int(rng.integers(1, 6))
        plan = plan_epoch(shards, world_size=world, num_workers=workers, batch_size=batch, history=history, **kw)
        assert sorted(samples_of(left)) == sorted(x for r in plan.workers for w in r for x in samples_of(w.ranges))
        history.append(Segment(world, workers, batch, int(rng.integers(0, plan.steps + 1))))
        before = sorted(samples_of(left))
        left = remaining(shards, history=history, **kw)
        after = samples_of(left)
        assert len(after) == len(set(after)) and set(after) <= set(before)  # nothing twice, nothing new


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
    loader = create_loader(
        data=str(prepared), split=split, batch_size=4, num_workers=3, seed=5, decode="none", shuffle_block=7
    )
    loader.set_epoch(4)
    full = batch_keys(loader, table)
    assert len(full) == len(loader) and len(loader) % 3 != 0
    for start in range(len(full) + 1):
        loader.set_epoch(4, start_step=start)
        assert batch_keys(loader, table) == full[start:], start
    assert loader.start_step == 0  # a resumed epoch does not leak into the next one
