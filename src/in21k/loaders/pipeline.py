"""The per-worker sample pipeline: generator stages, composed in the webdataset style.

    lanes of shards -> tar_samples -> interleave -> block_shuffle -> (wrap/cut) -> to_batches

Each stage is ``f(samples, ...) -> Iterator``. A worker's stream has a fixed *position space*: position
``i`` is the ``i``-th sample of the worker's shards in read order (``_info.json``'s ``shard_lengths`` say
how many samples each shard holds), and the shuffle is a fixed permutation of each block of positions.
Bad data never shifts positions: a sample that cannot be read (a corrupt member, or every sample of a
missing shard under ``shard_errors="skip"``) still occupies its position and is replaced, in its batch, by a
copy of a good sample of the same batch. That is what makes resuming at a step exact.

Read order: a worker reads ``interleave`` of its shards at once (lane ``l`` reads shards ``l, l+m, ...``
one after the other) and takes one sample from each lane in turn. Prepared shards may hold only a few
classes each, so mixing several shards keeps a shuffle block from being one class.

Shuffle: positions are cut into blocks of ``shuffle_block``; each block is permuted by a generator
seeded with ``(seed, epoch, rank, worker, block)``. Unlike a streaming shuffle buffer (whose state
depends on everything read before), a block can be rebuilt on its own, so a resumed epoch re-reads at
most one block per worker and each lane's current shard up to the resume point, and decodes nothing
it does not yield.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from in21k.dataset import PreparedDataset, Shard, split_member
from in21k.errors import DataError
from in21k.loaders.cache import ShardCache
from in21k.loaders.splitting import Range, WorkerPlan, block_permutation, lane_consumed, lanes_of
from in21k.storage import Retry, is_pipe, is_remote, open_stream
from in21k.storage import size as remote_size
from in21k.tarformat import tar_members

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


class ShardReadError(DataError):
    """A shard could not be opened or read to its stated length."""


@dataclass
class RawSample:
    """One sample as stored: its members' bytes by extension, or the reason it could not be read."""

    key: str | None
    url: str
    files: dict[str, bytes] = field(default_factory=dict)
    error: str | None = None


@dataclass
class StreamStats:
    """Counters a worker sends along with each batch (as deltas since the previous batch)."""

    shards_read: int = 0
    shard_errors: int = 0
    corrupt: int = 0
    fresh_buffers: int = 0  # batches built in freshly allocated shared memory (no free ring slot)
    retries: int = 0  # object-storage reads retried after a transient failure (storage.Retry)
    cache_hits: int = 0  # shards read from the local shard cache
    cache_misses: int = 0  # shards downloaded into it

    def take(self) -> dict[str, int]:
        out = {
            "shards_read": self.shards_read,
            "shard_errors": self.shard_errors,
            "corrupt": self.corrupt,
            "fresh_buffers": self.fresh_buffers,
            "retries": self.retries,
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
        }
        self.shards_read = self.shard_errors = self.corrupt = self.fresh_buffers = self.retries = 0
        self.cache_hits = self.cache_misses = 0
        return out

    def count_retry(self) -> None:
        self.retries += 1


@dataclass
class SampleOffsets:
    """Byte offsets of each shard's samples (``prepare`` records them in the shard's stats file), so that a
    worker whose range starts inside a shard opens it there with one ranged read instead of reading the
    samples before it. Fetched once per shard and kept, per worker; ``None`` for a shard without them."""

    dataset: PreparedDataset
    split: str
    known: dict[int, list[int] | None] = field(default_factory=dict)

    def __call__(self, shard: Shard) -> list[int] | None:
        if shard.index not in self.known:
            self.known[shard.index] = self.dataset.sample_offsets(self.split, shard)
        return self.known[shard.index]


@dataclass
class ReadOptions:
    storage_options: dict[str, Any] | None = None
    allow_pipe: bool = False
    policy: str = "skip"
    retry: Retry = field(default_factory=Retry)  # how long a broken object-storage read is retried
    client: str = "auto"  # storage.stream_client's choice
    cache: ShardCache | None = None  # loader.cache_dir: remote shards kept on local disk
    offsets: SampleOffsets | None = None  # where samples start, to open a shard mid-way


def open_shard(shard: Shard, start: int, opts: ReadOptions, stats: StreamStats) -> IO[bytes]:
    """The shard's bytes from byte ``start``: from the local cache when one is set (a miss downloads the shard
    into it first), else streamed from storage."""
    url = shard.url
    if opts.cache is not None and is_remote(url):
        cache = opts.cache
        hits, misses = cache.stats.hits, cache.stats.misses
        cached = cache.open(
            url,
            size=lambda: remote_size(url, storage_options=opts.storage_options),
            download=lambda: open_stream(
                url,
                storage_options=opts.storage_options,
                retry=opts.retry,
                client=opts.client,
                on_retry=stats.count_retry,
            ),
        )
        stats.cache_hits += cache.stats.hits - hits
        stats.cache_misses += cache.stats.misses - misses
        if cached is not None:
            cached.seek(start)
            return cached
    return open_stream(
        url,
        storage_options=opts.storage_options,
        allow_pipe=opts.allow_pipe,
        retry=opts.retry,
        client=opts.client,
        on_retry=stats.count_retry,
        start=start,
    )


def tar_samples(shard: Shard, *, skip: int, opts: ReadOptions, stats: StreamStats) -> Iterator[RawSample]:
    """Samples ``skip .. shard.length-1`` of one shard; unreadable positions become error samples (or raise)."""
    url = shard.url
    produced = skip
    stats.shards_read += 1
    # Where to start reading: at sample ``skip`` itself when the shard's sample offsets are known.
    offsets = opts.offsets(shard) if skip and opts.offsets is not None and not is_pipe(url) else None
    start, first = (offsets[skip], skip) if offsets else (0, 0)
    try:
        with open_shard(shard, start, opts, stats) as stream:
            current: RawSample | None = None
            index = first - 1
            for name, data in tar_members(stream):
                parts = split_member(name)
                if parts is None:
                    continue
                key, ext = parts
                if current is None or key != current.key:
                    if current is not None and index >= skip:
                        yield current
                        produced += 1
                    index += 1
                    if index >= shard.length:
                        current = None
                        break  # the shard holds more than _info.json says: positions stop at its length
                    current = RawSample(key, url)
                if index >= skip:
                    current.files[ext] = data
            if current is not None and index >= skip:
                yield current
                produced += 1
    except Exception as exc:  # the stream died: FileNotFoundError, OSError, EOFError, TarFormatError...
        problem = f"{type(exc).__name__}: {exc}"
        if opts.policy == "raise":
            raise ShardReadError(
                f"cannot read shard {url}: {problem} (shard_errors='skip' counts and skips such shards)"
            ) from exc
        log.warning("shard %s unreadable after %d samples (%s); skipping its remaining samples", url, produced, problem)
        stats.shard_errors += 1
        yield from (RawSample(None, url, error=problem) for _ in range(shard.length - produced))
        return
    if produced < shard.length:
        problem = f"holds {produced} samples, _info.json says {shard.length}"
        if opts.policy == "raise":
            raise ShardReadError(f"shard {url} {problem} (shard_errors='skip' counts and skips the missing ones)")
        log.warning("shard %s %s; counting the missing ones as corrupt", url, problem)
        stats.shard_errors += 1
        yield from (RawSample(None, url, error=problem) for _ in range(shard.length - produced))


def lane_samples(ranges: list[Range], *, start: int, opts: ReadOptions, stats: StreamStats) -> Iterator[RawSample]:
    """A lane: its sample ranges one after the other, from lane position ``start``."""
    for r in ranges:
        if start >= r.length:
            start -= r.length
            continue
        samples = tar_samples(r.shard, skip=r.start + start, opts=opts, stats=stats)
        # Stop at the range's end: closing the shard's stream rather than reading what another worker reads.
        yield from itertools.islice(samples, r.length - start)
        samples.close()
        start = 0


def interleave(sources: list[Iterator[RawSample]], *, first: int = 0) -> Iterator[RawSample]:
    """One sample from each source in turn; a source that runs dry drops out.

    ``first``: the source that takes the next turn, for a stream resumed in the middle of a round.
    """
    active = list(range(len(sources)))
    order = active[first:]  # the rest of an interrupted round, then full rounds
    while order:
        for i in order:
            try:
                yield next(sources[i])
            except StopIteration:
                active.remove(i)
        order = list(active)


def block_shuffle(
    samples: Iterator[RawSample], *, first_block: int, block: int, permute: Callable[[int, int], np.ndarray]
) -> Iterator[RawSample]:
    """Permute consecutive blocks of ``block`` samples; ``permute(block_index, n)`` gives the order."""
    b = first_block
    while True:
        chunk = []
        for s in samples:
            chunk.append(s)
            if len(chunk) == block:
                break
        if not chunk:
            return
        for i in permute(b, len(chunk)):
            yield chunk[i]
        if len(chunk) < block:
            return
        b += 1


@dataclass
class WorkerStream:
    """The position space of one logical worker for one epoch (see the module docstring)."""

    plan: WorkerPlan
    opts: ReadOptions
    stats: StreamStats
    interleave: int = 4
    shuffle_block: int = 2048
    shuffle_seed: tuple[int, ...] | None = None  # splitting.shuffle_seed(...); None: no shuffle

    @property
    def length(self) -> int:
        return sum(r.length for r in self.plan.read_ranges)

    def _lanes(self) -> list[list[Range]]:
        return lanes_of(self.plan.read_ranges, self.interleave)

    def _permute(self, b: int, n: int) -> np.ndarray:
        return block_permutation(self.shuffle_seed, b, n)  # type: ignore[arg-type]

    def positions(self, start: int, count: int) -> Iterator[RawSample]:
        """``count`` samples from shuffled position ``start`` (``start + count <= length``)."""
        if count <= 0:
            return
        shuffled = self.shuffle_seed is not None
        # Unshuffled, read position = output position: jump straight there. Shuffled: rebuild the block.
        b0 = start // self.shuffle_block if shuffled else 0
        base = b0 * self.shuffle_block if shuffled else start
        lanes = self._lanes()
        taken, next_lane = lane_consumed([sum(s.length for s in lane) for lane in lanes], base)
        sources = [
            lane_samples(lane, start=t, opts=self.opts, stats=self.stats) for lane, t in zip(lanes, taken, strict=True)
        ]
        stream = interleave(sources, first=next_lane)
        if shuffled:
            stream = block_shuffle(stream, first_block=b0, block=self.shuffle_block, permute=self._permute)
        skip = start - base
        for i, s in enumerate(stream):
            if i < skip:
                continue
            yield s
            if i + 1 - skip == count:
                break
        # Closing the generators closes the open tar streams at once rather than at garbage collection.
        stream.close()
        for source in sources:
            source.close()

    def outputs(self, start: int, stop: int) -> Iterator[RawSample]:
        """Output indices ``start .. stop-1``; index ``o`` is position ``o % length`` (wrap-around padding)."""
        n = self.length
        o = start
        while o < stop:
            i = o % n
            end = min(stop, o - i + n)
            yield from self.positions(i, end - o)
            o = end


def chunked(samples: Iterable[RawSample], size: int) -> Iterator[list[RawSample]]:
    chunk: list[RawSample] = []
    for s in samples:
        chunk.append(s)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
