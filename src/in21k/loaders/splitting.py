"""Who reads which samples, and how many batches each rank and worker yields in an epoch.

Everything here is pure arithmetic on ``_info.json``'s ``shard_lengths``: every rank computes the same plan
without talking to the others, and the plan of an epoch depends on ``(seed, epoch)`` and on the
configurations the epoch has run with so far, never on timing.

**The epoch's global order.** All samples of the split as one sequence of sample ranges: the shards in an
order permuted by ``(seed, epoch)`` when training (listed order otherwise), each shard's samples in
stored order. A *segment* is a stretch of the epoch run with one configuration (world size, workers per
rank, batch size); an uninterrupted epoch is one segment.

**Cutting a segment.** The samples the segment still has to yield (at its start: the whole sequence) are cut
into contiguous pieces, in order: first one piece per rank, of equal size to within one sample, then each
rank's piece into its workers' pieces, worker ``w`` taking ``batches_w x batch_size`` samples (the last
workers of a rank may be short). Pieces may start and end inside a shard: a shard can be read by several
workers, each its own sample range, so any number of ranks and workers can read any split, down to a
single shard. Every sample is yielded exactly once; ranks and workers short of a full last batch repeat
their own first samples (*padding*, counted in ``EpochPlan.repeated``).

**Equal steps.** ``steps = ceil(ceil(total / world_size) / batch_size)`` batches on every rank, training and
evaluation alike. Inside a rank, worker ``w`` of ``n`` yields ``steps // n + (w < steps % n)`` batches, so
the DataLoader's round robin makes step ``s`` come from worker ``s % n``; resuming at step ``k``, worker
``w`` has done ``k // n + (w < k % n)`` of them.

**Elastic resume.** When the configuration changes mid-epoch (a checkpoint of 4 ranks resumed on 3), the
samples the earlier segments yielded are known from their configurations and step counts alone (the
block shuffle of ``pipeline`` is a pure function of its seed), so the rest of the epoch is exactly the
samples not yet seen: a new segment cuts them as above. With an unchanged configuration a resume stays in
its segment and is bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from in21k.dataset import Shard
from in21k.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """Samples ``start .. stop-1`` of one shard (in its stored order)."""

    shard: Shard
    start: int
    stop: int

    @property
    def length(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Segment:
    """A stretch of an epoch run with one configuration, and the batches each rank yielded in it."""

    world_size: int
    num_workers: int
    batch_size: int
    steps: int = 0

    def same_config(self, other: Segment) -> bool:
        return (self.world_size, self.num_workers, self.batch_size) == (
            other.world_size,
            other.num_workers,
            other.batch_size,
        )


@dataclass(frozen=True)
class WorkerPlan:
    """One logical worker's share of a segment: its sample ranges (in epoch order) and batch count."""

    rank: int
    worker: int
    ranges: tuple[Range, ...]
    batches: int
    # Only for a worker with no samples of its own but batches to fill: what it repeats instead (its rank's
    # first samples, or the epoch's when the rank has none). Counted as padding.
    padding: tuple[Range, ...] = ()

    @property
    def read_ranges(self) -> tuple[Range, ...]:
        """What the worker reads: its own ranges, or its padding source when it has none."""
        return self.ranges or self.padding

    @property
    def samples(self) -> int:
        """Samples of its own (before padding to ``batches * batch_size``)."""
        return sum(r.length for r in self.ranges)

    @property
    def shards(self) -> tuple[Shard, ...]:
        """The distinct shards it reads from, in order."""
        out: list[Shard] = []
        for r in self.ranges:
            if not out or out[-1] != r.shard:
                out.append(r.shard)
        return tuple(out)


@dataclass(frozen=True)
class EpochPlan:
    epoch: int
    segment: int  # index of this segment in the epoch (0: the epoch's start)
    steps: int
    batch_size: int
    workers: tuple[tuple[WorkerPlan, ...], ...]  # [rank][worker]

    def for_worker(self, rank: int, worker: int) -> WorkerPlan:
        return self.workers[rank][worker]

    @property
    def samples(self) -> int:
        """Distinct samples the segment yields, over all ranks."""
        return sum(w.samples for r in self.workers for w in r)

    @property
    def repeated(self) -> int:
        """Samples yielded a second time (or more) this segment, summed over ranks: the padding."""
        return sum(max(0, w.batches * self.batch_size - w.samples) for r in self.workers for w in r)

    @property
    def dropped(self) -> int:
        """Samples not yielded: always 0 (kept for callers of the earlier drop-the-rest rule)."""
        return 0


def shard_order(num_shards: int, *, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The epoch's shard order: a permutation seeded by ``(seed, epoch)``, or the listed order."""
    if not shuffle:
        return list(range(num_shards))
    rng = np.random.default_rng([seed, epoch, 0x5A4D])
    return [int(i) for i in rng.permutation(num_shards)]


def epoch_ranges(shards: Sequence[Shard], *, seed: int, epoch: int, shuffle: bool) -> list[Range]:
    """The epoch's global order: whole shards, in the epoch's shard order."""
    return [
        Range(shards[i], 0, shards[i].length) for i in shard_order(len(shards), seed=seed, epoch=epoch, shuffle=shuffle)
    ]


def worker_batches(steps: int, num_workers: int) -> list[int]:
    """Batches per worker: as equal as possible, the larger counts first."""
    return [steps // num_workers + (w < steps % num_workers) for w in range(num_workers)]


def batches_done(start_step: int, num_workers: int) -> list[int]:
    """How many batches each worker produced in the first ``start_step`` steps (step ``s`` is worker ``s % n``)."""
    return worker_batches(start_step, num_workers)


def take(ranges: list[Range], cursor: tuple[int, int], count: int) -> tuple[list[Range], tuple[int, int]]:
    """``count`` samples of ``ranges`` from ``cursor`` (range index, offset in it): the pieces and the new cursor."""
    out: list[Range] = []
    i, off = cursor
    while count > 0 and i < len(ranges):
        r = ranges[i]
        n = min(count, r.length - off)
        out.append(Range(r.shard, r.start + off, r.start + off + n))
        count -= n
        off += n
        if off == r.length:
            i, off = i + 1, 0
    return out, (i, off)


def cut(
    remaining: list[Range], *, world_size: int, num_workers: int, batch_size: int, epoch: int = 0, segment: int = 0
) -> EpochPlan:
    """Cut the samples still to yield into rank pieces, then worker pieces (the module docstring)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1:
        raise ConfigError(f"world_size must be >= 1, got {world_size}")
    nw = max(1, num_workers)
    total = sum(r.length for r in remaining)
    steps = math.ceil(math.ceil(total / world_size) / batch_size) if total else 0
    counts = worker_batches(steps, nw)
    cursor = (0, 0)
    workers = []
    for rank in range(world_size):
        left = total // world_size + (rank < total % world_size)
        row: list[WorkerPlan] = []
        for w in range(nw):
            pieces, cursor = take(remaining, cursor, min(counts[w] * batch_size, left))
            left -= sum(p.length for p in pieces)
            row.append(WorkerPlan(rank, w, tuple(pieces), counts[w]))
        own = [r for wp in row for r in wp.ranges] or remaining
        for w, wp in enumerate(row):
            if wp.batches and not wp.ranges:  # nothing of its own to wrap around: repeat its rank's first samples
                row[w] = WorkerPlan(rank, w, (), wp.batches, tuple(take(own, (0, 0), wp.batches * batch_size)[0]))
        workers.append(tuple(row))
    return EpochPlan(epoch=epoch, segment=segment, steps=steps, batch_size=batch_size, workers=tuple(workers))


def lanes_of(ranges: Sequence[Range], interleave: int) -> list[list[Range]]:
    """A worker's read lanes: ``interleave`` lanes read at once, lane ``l`` taking ranges ``l, l+m, ...``."""
    m = max(1, min(interleave, len(ranges)))
    return [list(ranges[lane::m]) for lane in range(m)]


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


def block_permutation(shuffle_seed: Sequence[int], block: int, n: int) -> np.ndarray:
    """The order in which a shuffled worker yields the ``n`` samples of its shuffle block ``block``."""
    return np.random.default_rng([*shuffle_seed, block]).permutation(n)


def shuffle_seed(seed: int, epoch: int, segment: int, rank: int, worker: int) -> tuple[int, ...]:
    """The seed of a worker's block shuffle (segment 0 keeps the earlier seed layout)."""
    return (seed, epoch, rank, worker) if segment == 0 else (seed, epoch, rank, worker, 0x5E6, segment)


@dataclass(frozen=True)
class StreamSettings:
    """How a worker turns its ranges into a sample stream (``pipeline.WorkerStream``); part of the plan."""

    seed: int
    shuffle: bool
    interleave: int
    shuffle_block: int


def unseen(plan: EpochPlan, steps: int, settings: StreamSettings) -> list[Range]:
    """The samples of ``plan`` that its first ``steps`` steps did not yield, as ranges in a fixed order."""
    out: list[Range] = []
    for rank in plan.workers:
        done = batches_done(steps, len(rank))
        for wp in rank:
            out.extend(_worker_unseen(plan, wp, done[wp.worker] * plan.batch_size, settings))
    return _merge(out)


def _worker_unseen(plan: EpochPlan, wp: WorkerPlan, outputs: int, s: StreamSettings) -> list[Range]:
    n = wp.samples
    if outputs >= n:
        return []
    lanes = lanes_of(wp.ranges, s.interleave)
    lengths = [sum(r.length for r in lane) for lane in lanes]
    if not s.shuffle or outputs == 0:
        base, leftovers = outputs, []
    else:
        block = outputs // s.shuffle_block
        start = block * s.shuffle_block
        size = min(s.shuffle_block, n - start)
        seed = shuffle_seed(s.seed, plan.epoch, plan.segment, wp.rank, wp.worker)
        perm = block_permutation(seed, block, size)
        leftovers = [_at(lanes, lengths, start + int(p)) for p in sorted(perm[outputs - start :])]
        base = start + size
    taken, _ = lane_consumed(lengths, base)
    out = list(leftovers)
    for lane, length, t in zip(lanes, lengths, taken, strict=True):
        out.extend(take(lane, _skip(lane, t), length - t)[0])
    return out


def _skip(lane: list[Range], count: int) -> tuple[int, int]:
    return take(lane, (0, 0), count)[1]


def _at(lanes: list[list[Range]], lengths: list[int], position: int) -> Range:
    """The one-sample range read at ``position`` of a worker's interleaved read order."""
    taken, nxt = lane_consumed(lengths, position)
    m = len(lengths)
    # The round robin continues at lane ``nxt``, skipping lanes that ran dry (and wrapping to a new round).
    lane = next(lane for lane in ((nxt + k) % m for k in range(m)) if taken[lane] < lengths[lane])
    pieces, _ = take(lanes[lane], _skip(lanes[lane], taken[lane]), 1)
    return pieces[0]


def _merge(ranges: list[Range]) -> list[Range]:
    """Adjacent ranges of the same shard joined (``[a, b) + [b, c) = [a, c)``), order kept."""
    out: list[Range] = []
    for r in ranges:
        if r.length == 0:
            continue
        if out and out[-1].shard == r.shard and out[-1].stop == r.start:
            out[-1] = Range(r.shard, out[-1].start, r.stop)
        else:
            out.append(r)
    return out


def remaining(
    shards: Sequence[Shard],
    *,
    seed: int,
    epoch: int,
    shuffle: bool,
    interleave: int,
    shuffle_block: int,
    history: Sequence[Segment] = (),
) -> list[Range]:
    """The samples of ``epoch`` that the segments of ``history`` (configurations and step counts) did not yield."""
    settings = StreamSettings(seed, shuffle, interleave, shuffle_block)
    left = epoch_ranges(shards, seed=seed, epoch=epoch, shuffle=shuffle)
    for i, seg in enumerate(history):
        done = cut(
            left,
            world_size=seg.world_size,
            num_workers=seg.num_workers,
            batch_size=seg.batch_size,
            epoch=epoch,
            segment=i,
        )
        if not 0 <= seg.steps <= done.steps:
            raise ConfigError(f"loader state: segment {i} ran {seg.steps} steps of {done.steps}; not this dataset?")
        left = unseen(done, seg.steps, settings)
    return left


def plan_epoch(
    shards: list[Shard],
    *,
    world_size: int,
    num_workers: int,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool,
    interleave: int = 4,
    shuffle_block: int = 2048,
    history: Sequence[Segment] = (),
    split: str = "train",
) -> EpochPlan:
    """The plan of the current segment of ``epoch``: the epoch's global order, minus what the segments of
    ``history`` (earlier configurations and their step counts) yielded, cut for this configuration."""
    if not shards:
        raise ConfigError(f"split {split!r} holds no samples")
    left = remaining(
        shards,
        seed=seed,
        epoch=epoch,
        shuffle=shuffle,
        interleave=interleave,
        shuffle_block=shuffle_block,
        history=history,
    )
    return cut(
        left, world_size=world_size, num_workers=num_workers, batch_size=batch_size, epoch=epoch, segment=len(history)
    )
