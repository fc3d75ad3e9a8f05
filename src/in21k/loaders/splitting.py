"""Who reads which shard, and how many batches each rank and worker yields in an epoch.

Everything here is pure arithmetic on ``_info.json``'s ``shard_lengths``: every rank computes the same
plan for ``(seed, epoch)`` without talking to the others.

Splitting: the shard order of the epoch (a permutation from ``(seed, epoch)`` when shuffling, the
listed order otherwise) is dealt to ranks, then each rank's shards to its workers, by a balanced greedy
rule: each shard goes to the part with the fewest samples so far, among the parts that may still take a
shard (part shard counts stay within one of each other, so every part gets at least one).

Equal steps: all ranks yield ``steps`` batches of exactly ``batch_size`` samples.

- training: ``steps = total_samples // (world_size * batch_size)``, the most every rank can yield
  on average; a rank (worker) with more samples than its share drops its last ones, one with fewer
  wraps around and repeats its first ones. ``EpochPlan.dropped``/``repeated`` give the exact numbers.
- evaluation: ``steps`` is the smallest count with which *every* sample is yielded at least once;
  the padding repeats samples (counted in ``repeated``).

Inside a rank, worker ``w`` of ``n`` yields ``steps // n + (w < steps % n)`` batches, so the
DataLoader's round-robin order is simply "step ``s`` comes from worker ``s % n``". That makes resuming
at a step exact: worker ``w`` has already produced ``start // n + (w < start % n)`` batches, and the
DataLoader's workers are rotated by ``start % n`` so its round robin continues where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from in21k.dataset import Shard
from in21k.errors import ConfigError


class NotEnoughShardsError(ConfigError):
    """Fewer shards than ranks x workers: some worker would have nothing to read."""


@dataclass(frozen=True)
class WorkerPlan:
    """One logical worker's share of an epoch."""

    rank: int
    worker: int
    shards: tuple[Shard, ...]
    batches: int

    @property
    def samples(self) -> int:
        """Samples in its shards (before cutting or wrapping to ``batches * batch_size``)."""
        return sum(s.length for s in self.shards)


@dataclass(frozen=True)
class EpochPlan:
    epoch: int
    steps: int
    batch_size: int
    workers: tuple[tuple[WorkerPlan, ...], ...]  # [rank][worker]

    def for_worker(self, rank: int, worker: int) -> WorkerPlan:
        return self.workers[rank][worker]

    @property
    def repeated(self) -> int:
        """Samples yielded twice (or more) this epoch, summed over ranks: wrap-around padding."""
        return sum(max(0, w.batches * self.batch_size - w.samples) for r in self.workers for w in r)

    @property
    def dropped(self) -> int:
        """Samples not yielded this epoch, summed over ranks."""
        return sum(max(0, w.samples - w.batches * self.batch_size) for r in self.workers for w in r)


def shard_order(num_shards: int, *, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The epoch's shard order: a permutation seeded by ``(seed, epoch)``, or the listed order."""
    if not shuffle:
        return list(range(num_shards))
    rng = np.random.default_rng([seed, epoch, 0x5A4D])
    return [int(i) for i in rng.permutation(num_shards)]


def balanced_split(lengths: list[int], parts: int) -> list[list[int]]:
    """Deal positions of ``lengths`` (in order) to ``parts`` parts: fewest samples first, counts within one."""
    n = len(lengths)
    floor, ceil = n // parts, -(-n // parts)
    out: list[list[int]] = [[] for _ in range(parts)]
    loads = [0] * parts
    for pos, length in enumerate(lengths):
        remaining = n - pos
        deficit = [max(0, floor - len(p)) for p in out]
        if remaining <= sum(deficit):  # the rest must fill the parts still below their minimum count
            eligible = [i for i in range(parts) if deficit[i] > 0]
        else:
            eligible = [i for i in range(parts) if len(out[i]) < ceil]
        best = min(eligible, key=lambda i: (loads[i], i))
        out[best].append(pos)
        loads[best] += length
    return out


def worker_batches(steps: int, num_workers: int) -> list[int]:
    """Batches per worker: as equal as possible, the larger counts first."""
    return [steps // num_workers + (w < steps % num_workers) for w in range(num_workers)]


def batches_done(start_step: int, num_workers: int) -> list[int]:
    """How many batches each worker produced in the first ``start_step`` steps (step ``s`` is worker ``s % n``)."""
    return worker_batches(start_step, num_workers)


def check_enough_shards(num_shards: int, *, world_size: int, num_workers: int, split: str) -> None:
    readers = world_size * max(1, num_workers)
    if num_shards < readers:
        most = max(0, num_shards // world_size)
        raise NotEnoughShardsError(
            f"split {split!r} has {num_shards} shard(s) but {world_size} rank(s) x {max(1, num_workers)} worker(s) "
            f"= {readers} readers each need at least one. Use num_workers <= {most} per rank"
            + (" (or fewer ranks)" if most == 0 else "")
            + ", or prepare the dataset again with smaller shards (more shards than ranks x workers)."
        )


def plan_epoch(
    shards: list[Shard],
    *,
    world_size: int,
    num_workers: int,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool,
    train: bool,
    split: str = "train",
) -> EpochPlan:
    """Split ``shards`` over ranks then workers and fix the common step count (see the module docstring)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    nw = max(1, num_workers)
    check_enough_shards(len(shards), world_size=world_size, num_workers=num_workers, split=split)
    order = [shards[i] for i in shard_order(len(shards), seed=seed, epoch=epoch, shuffle=shuffle)]
    per_rank = [[order[i] for i in part] for part in balanced_split([s.length for s in order], world_size)]
    per_worker = []
    for rank_shards in per_rank:
        parts = [[rank_shards[i] for i in part] for part in balanced_split([s.length for s in rank_shards], nw)]
        # Lower worker indices get the extra batch (worker_batches), so give them the larger parts.
        parts.sort(key=lambda part: -sum(s.length for s in part))
        per_worker.append(parts)
    total = sum(s.length for s in shards)
    if train:
        steps = total // (world_size * batch_size)
        if steps == 0:
            raise ConfigError(
                f"split {split!r} has {total} samples, fewer than world_size x batch_size = "
                f"{world_size} x {batch_size}: lower the batch size"
            )
    else:
        most = max(-(-sum(s.length for s in w) // batch_size) for r in per_worker for w in r)
        steps = nw * most
    counts = worker_batches(steps, nw)
    workers = tuple(
        tuple(WorkerPlan(rank, w, tuple(per_worker[rank][w]), counts[w]) for w in range(nw))
        for rank in range(world_size)
    )
    return EpochPlan(epoch=epoch, steps=steps, batch_size=batch_size, workers=workers)


def lane_consumed(lane_lengths: list[int], reads: int) -> tuple[list[int], int]:
    """After ``reads`` round-robin reads (a lane that runs dry drops out): samples taken from each lane,
    and the lane whose turn is next (round-robin reads continue from there)."""
    if reads >= sum(lane_lengths):
        return list(lane_lengths), 0
    lo, hi = 0, max(lane_lengths)
    while lo < hi:  # the largest full round count t with sum(min(L, t)) <= reads
        mid = (lo + hi + 1) // 2
        if sum(min(n, mid) for n in lane_lengths) <= reads:
            lo = mid
        else:
            hi = mid - 1
    taken = [min(n, lo) for n in lane_lengths]
    extra = reads - sum(taken)
    next_lane = 0
    for i, n in enumerate(lane_lengths):
        if extra == 0:
            break
        if n > lo:
            taken[i] += 1
            extra -= 1
            next_lane = i + 1
    return taken, next_lane
