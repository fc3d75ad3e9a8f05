"""``create_loader``: a prepared dataset URL -> batches of ``(images, class_index)`` for one rank.

A torch ``DataLoader`` (``batch_size=None``) over an ``IterableDataset`` whose workers build whole
batches: each worker reads its own shards (see ``splitting``), decodes and transforms samples straight
into a ``uint8`` batch buffer in shared memory, and hands over one batch at a time. Images stay
``uint8`` (channels-last ``[B, 3, H, W]``) until the trainer moves them to the device.

``set_epoch`` reaches the workers through two shared-memory integers (epoch, start step) created
before the workers start. Workers are persistent; the ``DataLoader`` calls the dataset's
``__iter__`` again in every worker at the start of each epoch, and that call reads the shared values,
so no worker restart is needed and no stale epoch can be used.

Batch buffers: with workers and ``decode="cpu"``, each worker decodes straight into one of a few batch
slots of a shared anonymous memory mapping (``BatchRing``) made before the workers fork, and sends only
the slot number; the main process wraps the slot in a tensor without copying, and the slot goes back to
the worker when that tensor is freed. Fresh shared memory per batch (what ``default_collate`` does) cost
~0.1 ms of CPU per 224 px image in page faults, mappings and file-descriptor passing, a sixth of the
decode + augment work. ``pin_memory=True`` keeps fresh buffers (pinning copies the batch anyway).

Resume exactness: ``set_epoch(e, start_step=k)`` then iterating yields exactly batches ``k ..
len(loader)-1`` of epoch ``e``, the same samples in the same order (and, because the augmentation RNGs
are seeded per batch from ``(seed, epoch, rank, worker, batch)``, the same pixels) as an uninterrupted
epoch, provided the dataset, ``batch_size``, ``num_workers``, world size and seed are unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
import mmap
import multiprocessing
import random
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset

from in21k.config import check_keys
from in21k.dataset import PreparedDataset, Shard
from in21k.errors import ConfigError, DataError
from in21k.loaders.cache import ShardCache
from in21k.loaders.options import LoaderOptions
from in21k.loaders.pipeline import (
    IMAGE_EXTS,
    RawSample,
    ReadOptions,
    SampleOffsets,
    StreamStats,
    WorkerStream,
    chunked,
)
from in21k.loaders.splitting import EpochPlan, Segment, batches_done, plan_epoch, remaining, shuffle_seed
from in21k.loaders.transforms import (
    MIIL_MEAN,
    MIIL_STD,
    CorruptImageError,
    ImageTransform,
    build_transform,
    jpeg_looks_complete,
)
from in21k.storage import release_filesystems

log = logging.getLogger(__name__)

DECODES = ("cpu", "none")


class CorruptSampleError(DataError):
    """A sample lacks its image or label, or they cannot be used."""


@dataclass(frozen=True)
class LoaderSpec:
    """Everything a worker needs; built once in the main process and copied into each worker."""

    shards: tuple[Shard, ...]
    split: str
    num_classes: int
    batch_size: int
    num_workers: int
    seed: int
    train: bool
    rank: int
    world_size: int
    decode: str
    corrupt: str
    image_size: int
    read: ReadOptions
    interleave: int
    shuffle_block: int
    fingerprint: str = ""  # the dataset's (PreparedDataset.fingerprint), recorded in state_dict


def _seed_of(*parts: int) -> int:
    return int(np.random.SeedSequence([abs(int(p)) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


_FREE, _SENT, _HELD = 0, 1, 2  # slot states (one byte each, in shared memory)
_RING = "ring"  # first element of a worker's message that names a ring slot instead of carrying tensors


class BatchRing:
    """``slots`` batch buffers per worker in one shared anonymous mapping, inherited by forked workers.

    A slot's life: the worker takes a ``_FREE`` slot, fills it, marks it ``_SENT`` and sends its number;
    the main process marks it ``_HELD`` and hands out a tensor viewing it; when that tensor (and every
    view of it) is freed, a finaliser marks the slot ``_FREE`` again. Each state change has one writer,
    so no lock is needed. A worker that finds no free slot (the consumer keeps many batches alive) falls
    back to a fresh shared-memory batch: slower, never wrong. Messages the DataLoader drops (an epoch
    abandoned mid-way) leave slots ``_SENT``; a worker reclaims its own at the start of the next epoch,
    when the DataLoader has drained every message of the previous one.
    """

    def __init__(self, num_workers: int, slots: int, batch_size: int, image_shape: tuple[int, int, int]) -> None:
        self.num_workers, self.slots, self.batch_size = num_workers, slots, batch_size
        self.image_shape = image_shape
        self._label_bytes = -(-batch_size * 8 // 64) * 64
        image_bytes = batch_size * int(np.prod(image_shape))
        self.slot_bytes = -(-(self._label_bytes + image_bytes) // mmap.PAGESIZE) * mmap.PAGESIZE
        # MAP_SHARED | MAP_ANONYMOUS: pages are only backed once touched, and do not count against /dev/shm.
        self._mem = mmap.mmap(-1, num_workers * slots * self.slot_bytes)
        self._state_mem = mmap.mmap(-1, max(1, num_workers * slots))
        self._state = np.frombuffer(self._state_mem, dtype=np.uint8)
        self._next = [0] * num_workers

    def _views(self, index: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        base = index * self.slot_bytes
        labels = np.frombuffer(self._mem, dtype=np.int64, count=n, offset=base)
        images = np.frombuffer(
            self._mem, dtype=np.uint8, count=n * int(np.prod(self.image_shape)), offset=base + self._label_bytes
        ).reshape(n, *self.image_shape)
        return images, labels

    def reclaim(self, worker: int) -> None:
        """In worker ``worker`` at the start of an epoch: slots sent but never received are free again."""
        states = self._state[worker * self.slots : (worker + 1) * self.slots]
        states[states == _SENT] = _FREE

    def acquire(self, worker: int, n: int) -> tuple[int, np.ndarray, np.ndarray] | None:
        """In a worker: a free slot's ``(index, images [n, H, W, C], labels [n])`` to fill, or ``None``."""
        for k in range(self.slots):
            slot = (self._next[worker] + k) % self.slots
            index = worker * self.slots + slot
            if self._state[index] == _FREE:
                self._state[index] = _SENT
                self._next[worker] = slot + 1
                return (index, *self._views(index, n))
        return None

    def receive(self, index: int, n: int) -> tuple[Any, Any]:
        """In the main process: ``(images [n, C, H, W] channels-last view, labels)`` of a sent slot."""
        import torch

        self._state[index] = _HELD
        images, labels = self._views(index, n)
        weakref.finalize(images, self._release, self._state, index)  # runs when the last view is freed
        return torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(labels.copy())

    @staticmethod
    def _release(state: np.ndarray, index: int) -> None:
        state[index] = _FREE


class _BatchBuilder:
    """Turns lists of raw samples into batches; bad samples are counted and replaced (or raise)."""

    def __init__(self, spec: LoaderSpec, transform: ImageTransform | None, stats: StreamStats) -> None:
        self.spec = spec
        self.transform = transform
        self.stats = stats
        self.last_good: tuple[Any, int] | None = None
        self.in_worker = False
        self.ring: BatchRing | None = None
        self.ring_worker = 0

    def _label(self, raw: RawSample) -> int:
        data = raw.files.get("cls")
        if data is None:
            raise CorruptSampleError("no .cls member")
        try:
            label = int(data.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            raise CorruptSampleError(f".cls is not an integer: {data[:20]!r}") from None
        if not 0 <= label < self.spec.num_classes:
            raise CorruptSampleError(f"class index {label} outside 0..{self.spec.num_classes - 1}")
        return label

    def _image_bytes(self, raw: RawSample) -> bytes:
        for ext in IMAGE_EXTS:
            if ext in raw.files:
                return raw.files[ext]
        raise CorruptSampleError(f"no image member (one of .{', .'.join(IMAGE_EXTS)})")

    def _bad(self, raw: RawSample, reason: str) -> None:
        where = f"sample {raw.key!r} of {raw.url}" if raw.key else f"a sample of {raw.url}"
        if self.spec.corrupt == "raise":
            raise DataError(f"corrupt {where}: {reason} (loader.corrupt='skip' counts and skips such samples)")
        log.debug("skipping corrupt %s: %s", where, reason)
        self.stats.corrupt += 1

    def build(self, raws: list[RawSample]) -> tuple:
        import torch

        n = len(raws)
        slot = None
        if self.spec.decode == "cpu":
            if self.ring is not None:
                slot = self.ring.acquire(self.ring_worker, n)
            if slot is not None:
                _, items, labels = slot  # type: ignore[misc]
            else:
                h, w, c = self.transform.output_shape  # type: ignore[union-attr]
                if self.in_worker:
                    # No free ring slot (or no ring): fresh shared memory, as default_collate does, so that
                    # handing the batch to the main process copies nothing.
                    storage = torch.UntypedStorage._new_shared(n * h * w * c)
                    buf = torch.empty(0, dtype=torch.uint8).set_(storage).view(n, h, w, c)
                    self.stats.fresh_buffers += 1
                else:
                    buf = torch.empty((n, h, w, c), dtype=torch.uint8)
                items = buf.numpy()
                labels = np.empty(n, dtype=np.int64)
        else:
            items = [None] * n  # type: ignore[assignment]
            labels = np.empty(n, dtype=np.int64)
        good = self._decode_into(raws, items, labels)
        if len(good) < n:
            self._fill(items, labels, good, n)
        if good:
            g = good[-1]
            self.last_good = (np.array(items[g]) if self.spec.decode == "cpu" else items[g], int(labels[g]))
        stats = self.stats.take()
        if slot is not None:
            return (_RING, slot[0], n, stats)
        if self.spec.decode == "cpu":
            return buf.permute(0, 3, 1, 2), torch.from_numpy(labels), stats
        sizes = torch.tensor([len(b) for b in items], dtype=torch.int64)
        flat = torch.frombuffer(bytearray(b"".join(items)), dtype=torch.uint8)
        return flat, sizes, torch.from_numpy(labels), stats

    def _decode_into(self, raws: list[RawSample], items: Any, labels: np.ndarray) -> list[int]:
        """Fill ``items[i]`` (an image view, or a list slot for JPEG bytes) and ``labels[i]``; the good ``i``."""
        good: list[int] = []
        into = self.transform.into if self.spec.decode == "cpu" else None  # type: ignore[union-attr]
        for i, raw in enumerate(raws):
            try:
                if raw.error is not None:
                    raise CorruptSampleError(raw.error)
                label = self._label(raw)
                data = self._image_bytes(raw)
                if into is not None:
                    into(data, items[i])
                else:
                    if not jpeg_looks_complete(data):
                        raise CorruptSampleError("not a complete JPEG (start/end markers missing)")
                    items[i] = data
                labels[i] = label
                good.append(i)
            except (CorruptSampleError, CorruptImageError) as exc:
                self._bad(raw, str(exc))
        return good

    def _fill(self, items: Any, labels: Any, good: list[int], n: int) -> None:
        """Replace bad slots by copies of good samples of the same batch (or the last good one seen)."""
        is_good = set(good)
        bad = [i for i in range(n) if i not in is_good]
        if good:
            sources = [(items[good[k % len(good)]], int(labels[good[k % len(good)]])) for k in range(len(bad))]
        elif self.last_good is not None:
            sources = [self.last_good] * len(bad)
        else:
            raise DataError(
                f"all {n} samples of a batch were unreadable and no earlier good sample exists to stand in for them; "
                "the shards named in the warnings above are missing or corrupt"
            )
        for i, (item, label) in zip(bad, sources, strict=True):
            if self.spec.decode == "cpu":
                items[i][...] = item
            else:
                items[i] = item
            labels[i] = label


class ShardStream(IterableDataset):
    """The ``IterableDataset``: in each worker, yields that worker's batches of the current epoch."""

    def __init__(
        self,
        spec: LoaderSpec,
        epoch: Any,
        start_step: Any,
        transform: ImageTransform | None,
        ring: BatchRing | None = None,
    ) -> None:
        self.spec = spec
        self._epoch = epoch  # multiprocessing.Value: written by set_epoch in the main process
        self._start_step = start_step
        self.transform = transform
        self.ring = ring
        # Earlier segments of the epoch ``history_epoch`` (elastic resume, see splitting); set before workers start.
        self.history: tuple[Segment, ...] = ()
        self.history_epoch = -1
        self._plans: dict[tuple, EpochPlan] = {}

    def plan(self, epoch: int) -> EpochPlan:
        history = self.history if epoch == self.history_epoch else ()
        key = (epoch, history)
        if key not in self._plans:
            s = self.spec
            self._plans = {
                key: plan_epoch(
                    list(s.shards),
                    world_size=s.world_size,
                    num_workers=s.num_workers,
                    batch_size=s.batch_size,
                    seed=s.seed,
                    epoch=epoch,
                    shuffle=s.train,
                    interleave=s.interleave,
                    shuffle_block=s.shuffle_block,
                    history=history,
                    split=s.split,
                )
            }
        return self._plans[key]

    def __iter__(self) -> Iterator[tuple]:
        import torch
        from torch.utils.data import get_worker_info

        s = self.spec
        info = get_worker_info()
        nw = max(1, s.num_workers)
        dl_worker = info.id if info is not None else 0
        epoch, start = int(self._epoch.value), int(self._start_step.value)
        plan = self.plan(epoch)
        # Rotate so the DataLoader's round robin (which always starts at its worker 0) continues at step `start`.
        logical = (dl_worker + start) % nw
        wp = plan.for_worker(s.rank, logical)
        first = batches_done(start, nw)[logical]
        stats = StreamStats()
        stream = WorkerStream(
            wp,
            s.read,
            stats,
            interleave=s.interleave,
            shuffle_block=s.shuffle_block,
            shuffle_seed=shuffle_seed(s.seed, epoch, plan.segment, s.rank, logical) if s.train else None,
        )
        builder = _BatchBuilder(s, self.transform, stats)
        builder.in_worker = info is not None
        if self.ring is not None and info is not None:
            # The ring is per DataLoader worker process (not per logical worker, which rotates on resume).
            self.ring.reclaim(dl_worker)
            builder.ring, builder.ring_worker = self.ring, dl_worker
        raws = stream.outputs(first * s.batch_size, wp.batches * s.batch_size)
        for b, chunk in enumerate(chunked(raws, s.batch_size), start=first):
            # Per-batch seeds make augmentation independent of how the epoch was split into runs.
            seed = _seed_of(s.seed, epoch, s.rank, logical, b, *((0x5E6, plan.segment) if plan.segment else ()))
            random.seed(seed)
            np.random.seed(seed % 2**32)  # timm's RandAugment picks its ops with the global numpy generator
            # The CPU generator only: torch.manual_seed also seeds every accelerator backend (~90 us a call).
            torch.default_generator.manual_seed(seed)
            yield builder.build(chunk)


class StreamingLoader:
    """What ``create_loader`` returns; see the module docstring and docs/loader.md."""

    def __init__(self, spec: LoaderSpec, transform: ImageTransform | None, *, prefetch_factor: int, pin_memory: bool):
        self.spec = spec
        ctx = multiprocessing.get_context("fork" if spec.num_workers > 0 else None)
        self._epoch = ctx.Value("q", 0, lock=False)
        self._start_step = ctx.Value("q", 0, lock=False)
        ring = None
        if spec.num_workers > 0 and spec.decode == "cpu" and transform is not None and not pin_memory:
            # prefetch_factor batches per worker are in flight; one more is held by the consumer, one spare.
            ring = BatchRing(spec.num_workers, prefetch_factor + 2, spec.batch_size, transform.output_shape)
        self._ring = ring
        self.dataset = ShardStream(spec, self._epoch, self._start_step, transform, ring)
        self._dl_kwargs: dict[str, Any] = {"num_workers": spec.num_workers, "pin_memory": pin_memory}
        if spec.num_workers > 0:
            self._dl_kwargs.update(
                persistent_workers=True, prefetch_factor=prefetch_factor, multiprocessing_context=ctx
            )
        self._dl = self._make_dataloader()
        self.transform = transform
        self.mean = transform.mean if transform is not None else MIIL_MEAN
        self.std = transform.std if transform is not None else MIIL_STD
        self._stats: dict[str, Any] = {}

    def _make_dataloader(self) -> Any:
        from torch.utils.data import DataLoader

        return DataLoader(self.dataset, batch_size=None, **self._dl_kwargs)

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    @property
    def start_step(self) -> int:
        return int(self._start_step.value)

    def plan(self, epoch: int | None = None) -> EpochPlan:
        return self.dataset.plan(self.epoch if epoch is None else epoch)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch (shard order, shuffle) and the step to start it at (resume)."""
        if epoch < 0:
            raise ConfigError(f"epoch must be >= 0, got {epoch}")
        if epoch != self.dataset.history_epoch and self.dataset.history:
            # Another epoch: the segments of an elastically resumed one no longer apply.
            self._set_history((), -1)
        steps = self.plan(epoch).steps
        if not 0 <= start_step <= steps:
            raise ConfigError(f"start_step must be in 0..{steps} (batches per epoch), got {start_step}")
        self._epoch.value = int(epoch)
        self._start_step.value = int(start_step)

    # ------------------------------------------------------------------ state
    def state_dict(self, *, epoch: int | None = None, step: int | None = None) -> dict[str, Any]:
        """The loader's position as a small JSON-serialisable dict (``load_state_dict`` restores it).

        ``step``: batches of the current epoch (segment) this rank has consumed (default: those the loader has
        yielded; pass the trainer's own count when it prefetches ahead). ``epoch``: default the current one;
        another epoch is described at its ``step``. Identical on every rank, so rank 0's suffices.
        """
        s = self.spec
        epoch = self.epoch if epoch is None else int(epoch)
        plan = self.plan(epoch)
        done = self.start_step + self._stats.get("batches", 0) if step is None else int(step)
        if not 0 <= done <= plan.steps:
            raise ConfigError(f"step must be in 0..{plan.steps} (batches of this epoch segment), got {done}")
        segments = [*self.dataset.history] if epoch == self.dataset.history_epoch else []
        segments.append(Segment(s.world_size, max(1, s.num_workers), s.batch_size, done))
        total = sum(sh.length for sh in s.shards)
        left = remaining(
            s.shards,
            seed=s.seed,
            epoch=epoch,
            shuffle=s.train,
            interleave=s.interleave,
            shuffle_block=s.shuffle_block,
            history=segments,
        )
        return {
            "schema": STATE_SCHEMA,
            "dataset": s.fingerprint,
            "split": s.split,
            "seed": s.seed,
            "train": s.train,
            "epoch": epoch,
            "world_size": s.world_size,
            "num_workers": s.num_workers,
            "batch_size": s.batch_size,
            "segments": [[g.world_size, g.num_workers, g.batch_size, g.steps] for g in segments],
            "samples_seen": total - sum(r.length for r in left),
            "samples": total,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where ``state`` (from ``state_dict``, maybe of another world size or worker count) stopped.

        Same world size, workers and batch size: the next iteration yields exactly the rest of that epoch's
        batches. Otherwise the rest of the epoch is its not-yet-seen samples, each exactly once, cut for
        this loader's configuration (elastic resume, see docs/loader.md).
        """
        s = self.spec
        if not isinstance(state, dict) or state.get("schema") != STATE_SCHEMA:
            raise DataError(f"not an in21k loader state (schema {STATE_SCHEMA!r})")
        if state["dataset"] != s.fingerprint:
            raise DataError(
                f"the loader state was saved for another dataset or split list (fingerprint {state['dataset']}, "
                f"this one {s.fingerprint}): resume with the dataset the run started with"
            )
        for key, mine in (("split", s.split), ("seed", s.seed), ("train", s.train)):
            if state[key] != mine:
                raise ConfigError(f"the loader state has {key}={state[key]!r}, this loader {key}={mine!r}")
        segments = [Segment(*map(int, g)) for g in state["segments"]]
        current = Segment(s.world_size, max(1, s.num_workers), s.batch_size)
        epoch = int(state["epoch"])
        if segments and segments[-1].same_config(current):
            history, start = tuple(segments[:-1]), segments[-1].steps
        else:
            history, start = tuple(segments), 0
            if segments:
                log.info(
                    "loader state from %d rank(s) x %d worker(s), batch %d; now %d x %d, batch %d: the rest "
                    "of epoch %d is its unseen samples",
                    segments[-1].world_size,
                    segments[-1].num_workers,
                    segments[-1].batch_size,
                    s.world_size,
                    max(1, s.num_workers),
                    s.batch_size,
                    epoch,
                )
        self._set_history(history, epoch)
        self.set_epoch(epoch, start)

    def _set_history(self, history: tuple[Segment, ...], epoch: int) -> None:
        if (history, epoch) == (self.dataset.history, self.dataset.history_epoch):
            return
        self.dataset.history, self.dataset.history_epoch = history, epoch
        # Persistent workers hold a copy of the dataset object from when they started: start new ones.
        self._restart_workers()

    def _restart_workers(self, *, failed: bool = False) -> None:
        """Stop this loader's persistent workers (if they run) and start new ones with the next epoch.

        After a failed epoch (``failed``) the workers are terminated first: torch's own shutdown waits up to
        5 s for each persistent worker that saw another worker's error, and their state is of no more use."""
        iterator = getattr(self._dl, "_iterator", None)
        if iterator is None:
            return
        if failed:
            for worker in getattr(iterator, "_workers", ()):
                if worker.is_alive():
                    worker.terminate()
        iterator._shutdown_workers()
        self._dl = self._make_dataloader()

    def __len__(self) -> int:
        """Batches per epoch for this rank (the same on every rank); a resumed epoch yields ``len - start_step``."""
        return self.plan().steps

    def __iter__(self) -> Iterator[tuple]:
        import torch

        plan = self.plan()
        start = self.start_step
        rank_workers = plan.workers[self.spec.rank]
        bs = self.spec.batch_size
        self._stats = {
            "epoch": self.epoch,
            "rank": self.spec.rank,
            "steps": plan.steps,
            "start_step": start,
            "batches": 0,
            "samples": 0,
            **dict.fromkeys(_COUNTERS.values(), 0),
            "repeated": sum(max(0, w.batches * bs - w.samples) for w in rank_workers),
            "dropped": 0,
            "segment": plan.segment,
        }
        if self.spec.num_workers > 0 and getattr(self._dl, "_iterator", None) is None:
            release_filesystems()  # the workers fork now: nothing of ours for them to finalise on the wrong loop
        try:
            for item in self._dl:
                if isinstance(item[0], str):  # (_RING, slot, n, stats)
                    _, index, n, delta = item
                    images, labels = self._ring.receive(index, n)  # type: ignore[union-attr]
                elif self.spec.decode == "cpu":
                    images, labels, delta = item
                else:
                    flat, sizes, labels, delta = item
                    images = list(torch.split(flat, sizes.tolist()))
                for counter, name in _COUNTERS.items():
                    self._stats[name] += int(delta[counter])
                self._stats["batches"] += 1
                self._stats["samples"] += len(labels)
                del item  # hold no reference to a batch the consumer has let go of
                yield images, labels
                del images, labels
        except Exception:
            # A worker's error (an unreadable shard under shard_errors: raise, a corrupt sample under
            # corrupt: raise) ends the epoch; the next one starts with new workers.
            self._restart_workers(failed=True)
            raise
        finally:
            # A finished (or abandoned) resumed epoch must not make the next one start mid-way too.
            self._start_step.value = 0
        if self._stats["batches"] != plan.steps - start:
            raise RuntimeError(
                f"rank {self.spec.rank} yielded {self._stats['batches']} batches, expected {plan.steps - start}: "
                "a loader bug; please report it with the dataset's _info.json"
            )

    def epoch_stats(self) -> dict[str, Any]:
        """Counts of the last (or current) epoch on this rank: batches, samples, corrupt samples skipped,
        shards read, unreadable shards, and the samples the equal-steps rule repeated (padding)."""
        return dict(self._stats)


STATE_SCHEMA = "in21k.loader-state/1"
# The workers' StreamStats counters -> their names in epoch_stats().
_COUNTERS = {
    "shards_read": "shards_read",
    "shard_errors": "shard_errors",
    "corrupt": "corrupt_skipped",
    "fresh_buffers": "fresh_buffers",
    "retries": "read_retries",
    "cache_hits": "cache_hits",
    "cache_misses": "cache_misses",
}


def _dist_defaults(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    try:
        import torch.distributed as dist

        initialized = dist.is_available() and dist.is_initialized()
    except ImportError:  # pragma: no cover - torch without distributed support
        initialized = False
    if rank is None and world_size is None and not initialized:
        return 0, 1
    if not initialized:
        raise ConfigError("give both rank and world_size, or neither (then torch.distributed decides)")
    return (dist.get_rank() if rank is None else rank), (dist.get_world_size() if world_size is None else world_size)


def create_loader(
    *,
    data: str | PreparedDataset,
    split: str,
    batch_size: int,
    options: LoaderOptions | None = None,
    seed: int = 0,
    train: bool | None = None,
    image_size: int = 224,
    decode: str = "cpu",
    rank: int | None = None,
    world_size: int | None = None,
    **option_overrides: Any,
) -> StreamingLoader:
    """A loader of ``(images, labels)`` batches of ``split`` for this rank; see docs/loader.md.

    ``data``: a prepared dataset URL (or an opened ``PreparedDataset``). ``options``: the ``LoaderOptions``
    (the ``loader:`` section of the commands); keyword arguments named like its fields override it, so
    ``create_loader(data=..., split="train", batch_size=64, num_workers=8)`` works too.
    """
    if option_overrides:
        check_keys(LoaderOptions, option_overrides, "create_loader keyword arguments")
        options = dataclasses.replace(options or LoaderOptions(), **option_overrides)
    options = options or LoaderOptions()
    options.validate()
    if decode not in DECODES:
        raise ConfigError(f"decode must be one of {', '.join(DECODES)}, got {decode!r}")
    rank, world_size = _dist_defaults(rank, world_size)
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is not in 0..{world_size - 1}")
    train = (split == "train") if train is None else bool(train)
    ds = (
        data
        if isinstance(data, PreparedDataset)
        else PreparedDataset.open(data, storage_options=options.storage_options)
    )
    shards = ds.shards(split, allow_pipe=options.allow_pipe)
    if not shards:
        raise DataError(f"split {split!r} of {ds.url} holds no samples")
    total = sum(sh.length for sh in shards)
    if train and total < world_size * batch_size:
        raise ConfigError(
            f"split {split!r} has {total} samples, fewer than world_size x batch_size = {world_size} x {batch_size}: "
            "lower the batch size"
        )
    workers = options.num_workers
    most = max(1, len(shards) // world_size)  # workers per rank that each start reading a shard of their own
    if workers > most:
        log.info(
            "split %r: %d shard(s) for %d rank(s): %d loader worker(s) per rank instead of %d",
            split,
            len(shards),
            world_size,
            most,
            workers,
        )
        workers = most
    tf = build_transform(options.transform, image_size=image_size, train=train, timm_args=options.timm_args)
    spec = LoaderSpec(
        shards=tuple(shards),
        split=split,
        num_classes=ds.num_classes,
        batch_size=batch_size,
        num_workers=workers,
        seed=seed,
        train=train,
        rank=rank,
        world_size=world_size,
        decode=decode,
        corrupt=options.corrupt,
        image_size=image_size,
        read=ReadOptions(
            options.storage_options,
            options.allow_pipe,
            options.shard_errors,
            retry=options.retry_policy(),
            client=options.read_client,
            offsets=SampleOffsets(ds, split),
            cache=ShardCache(options.cache_dir, options.cache_bytes()) if options.cache_dir else None,
        ),
        interleave=options.interleave,
        shuffle_block=options.shuffle_block,
        fingerprint=ds.fingerprint(),
    )
    loader = StreamingLoader(
        spec, tf if decode == "cpu" else None, prefetch_factor=options.prefetch_factor, pin_memory=options.pin_memory
    )
    if decode == "none":
        loader.mean, loader.std = tf.mean, tf.std
    loader.plan(0)  # validates batch size against the split now rather than in a worker
    return loader
