"""The training engine: one rank's training state, and the one way to fit, step, checkpoint and resume it.

``in21k train`` (semantic softmax, KD) and ``in21k finetune`` (single label) are compositions over this
module: each builds its model, data, loss, schedule and validation inside a ``run_session``, hands them to
an ``Engine`` (everything through the constructor), calls ``Engine.start`` (resume or fresh), ``Engine.fit``
(the epochs) and ``Engine.save_model`` (the final model file). What the engine owns:

- the state: the model (``model``, unwrapped: what is saved; ``wrapped``: DDP and/or ``torch.compile``,
  what is called), optimizer, ``GradScaler``, EMA, the lr schedule (an array indexed by optimizer step)
  and the ``Position`` (optimizer steps done, epoch, batch within the epoch);
- one training batch (autocast forward, loss, scaled backward, gradient accumulation without all-reduce
  until the last micro-batch) and one optimizer step (lr from the schedule, clipping, scaler, EMA);
- checkpoints (``CheckpointManager``: atomic, keep-last-K) with every rank's RNG state; ``--resume``
  resolution, decided by rank 0 and broadcast so every rank restores the same file;
- buffer agreement: after an epoch, rank 0's buffers (BatchNorm statistics) go to every rank, so all ranks
  validate, checkpoint and end with the same weights;
- the fit loop (``fit``): per epoch, the rest of the epoch, buffer agreement, validation of the model and
  the EMA through the command's ``Validation``, the ``val`` record and log line, the epoch-end checkpoint;
- the metrics window (losses summed on the device, one host sync per metrics line; images/s, the data-wait
  share, device memory) and the ``train``, ``val`` and ``loader`` records of ``metrics.jsonl`` and of the
  TensorBoard event files (``training.events``);
- the per-rank session (``run_session``): process group, ``RUN_DIR/logs/rank-R.log``, console output from
  rank 0 only, ``config.yaml``, the device.

File names and the model file's format are ``training.rundir``'s.

Resume is exact: a run killed at any point and resumed from its newest checkpoint ends with weights
bit-identical to an uninterrupted run (tests/training), because the loader restarts at the saved batch,
augmentation is seeded per batch, and the RNG states continue where they were.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from in21k.config import save_config
from in21k.errors import ConfigError, DataError, SetupError
from in21k.redact import install_log_filter
from in21k.training import distributed as du
from in21k.training.checkpoint import CheckpointManager, atomic_save, load_checkpoint, rng_state, set_rng_state
from in21k.training.config import RunOptions
from in21k.training.optim import ModelEma, autocast_dtype, set_lr
from in21k.training.rundir import MetricsWriter, RunDir, model_file

log = logging.getLogger(__name__)


@dataclass
class Position:
    """Where training stands: optimizer steps done, the epoch, the loader batch within the epoch (within its
    current segment after an elastic resume), and the samples the optimizer steps consumed over all ranks."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    samples: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "samples": self.samples}

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, global_batch: int) -> Position:
        step = int(d["step"])
        samples = int(d["samples"]) if "samples" in d else step * global_batch  # checkpoints before "samples"
        return cls(step, int(d["epoch"]), int(d.get("batch_in_epoch", 0)), samples)


# ----------------------------------------------------------------------------------------- session
def build_device(choice: str, info: du.DistInfo) -> torch.device:
    """``cpu``, ``cuda`` (this rank's GPU: ``cuda:LOCAL_RANK``) or ``auto`` (CUDA when available)."""
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SetupError("--device cuda but CUDA is not available; use --device cpu")
    return torch.device("cuda", info.local_rank)


def setup_logging(run: RunDir, rank: int) -> logging.Handler:
    """Every rank logs to ``RUN_DIR/logs/rank-R.log``; only rank 0 keeps console output (errors aside)."""
    path = run.log(rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    handler = logging.FileHandler(path)
    handler.setLevel(logging.INFO)
    install_log_filter([handler])  # no credential in a log file
    handler.setFormatter(logging.Formatter(f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    if rank != 0:
        for h in root.handlers:
            if type(h) is logging.StreamHandler:
                h.setLevel(logging.ERROR)
    return handler


@contextlib.contextmanager
def run_session(run: RunDir, cfg: Any) -> Iterator[tuple[du.DistInfo, torch.device]]:
    """This process as one rank of the run ``cfg`` (a train or finetune config) describes: joins torchrun's
    process group (if any), logs to its file, writes ``config.yaml`` (rank 0), picks the device; leaves cleanly.
    """
    info = du.init_distributed()
    handler = setup_logging(run, info.rank)
    try:
        if cfg.run.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif torch.cuda.is_available():
            torch.backends.cudnn.benchmark = True
        if info.rank == 0:
            save_config(cfg, run.config)
        yield info, build_device(cfg.device, info)
    finally:
        du.destroy()
        logging.getLogger().removeHandler(handler)
        handler.close()


class LossWindow:
    """Loss sums and timing since the last metrics line (the sums stay on the device until then).

    ``waited`` is the time this rank spent waiting for its next batch (in ``next()`` of the loader, or of the
    feed's read-ahead thread): its share of the window's wall time is the data-wait share of step time, near 0
    when the loader keeps ahead of the model and near 1 when the model waits for data.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.batches, self.start, self.waited = 0, time.perf_counter(), 0.0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def add(self, losses: dict[str, torch.Tensor]) -> None:
        for name, value in losses.items():
            if name not in self.sums:
                self.sums[name] = torch.zeros((), device=self.device, dtype=torch.float64)
            self.sums[name] += value.detach().double()
        self.batches += 1

    def take(self, global_batch: int) -> tuple[dict[str, float], dict[str, float]]:
        """Mean of each loss over the window and over ranks; and the window's speed: ``img_per_s`` (the whole
        job), ``data_wait`` (this rank's share of time spent waiting for data) and, on GPUs, ``device_mem_gib``
        (this rank's peak of allocated device memory)."""
        means = {k: float(du.all_reduce_mean(v / max(self.batches, 1))) for k, v in self.sums.items()}
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        speed = {
            "img_per_s": round(self.batches * global_batch / elapsed, 1),
            "data_wait": round(min(self.waited / elapsed, 1.0), 4),
        }
        if self.device.type == "cuda":
            speed["device_mem_gib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 3)
            torch.cuda.reset_peak_memory_stats(self.device)
        for v in self.sums.values():
            v.zero_()
        self.batches, self.start, self.waited = 0, time.perf_counter(), 0.0
        return means, speed


def timed(batches: Iterator[Any], window: LossWindow) -> Iterator[Any]:
    """``batches``, adding the time each ``next()`` takes to the window's ``waited``."""
    while True:
        start = time.perf_counter()
        try:
            item = next(batches)
        except StopIteration:
            return
        window.waited += time.perf_counter() - start
        yield item


def batch_seed(seed: int, epoch: int, batch: int, rank: int) -> int:
    """Augmentation seed of one batch of one rank (GPU-decode feed): resume-exact, independent of timing."""
    return ((seed * 1_000_003 + epoch) * 1_000_003 + batch) * 1009 + rank


def feed_batches(
    loader: Any,
    feed: Callable,
    *,
    device: torch.device,
    start: int,
    seed_of: Callable[[int], int],
    prefetch: int,
    workers: int,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(batch index, x, y)`` on the device; with loader workers, the feed runs ahead in a thread."""
    from in21k.training.feed import DevicePrefetcher

    if prefetch > 0 and workers > 0:
        # (Without workers the loader itself runs in the consuming thread and reseeds torch's global
        # generator per batch, which must stay on the training thread.)
        yield from DevicePrefetcher(loader, feed, device=device, depth=prefetch, start=start, seed_of=seed_of)
        return
    for i, (images, labels) in enumerate(loader, start=start):
        x, y = feed(images, labels, seed=seed_of(i))
        yield i, x, y


# ----------------------------------------------------------------------------------------- engine
class TrainLoader(Protocol):
    """What the engine needs of a training loader: the streaming loader (``in21k.loaders.create_loader``) and
    the class-folder loader (``in21k.loaders.folders.FolderLoader``) both provide it."""

    start_step: int  # where the current epoch starts (after ``set_epoch`` or ``load_state_dict``)

    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[tuple[Any, torch.Tensor]]: ...
    def set_epoch(self, epoch: int, start_step: int = 0) -> None: ...
    def state_dict(self, *, epoch: int, step: int) -> dict[str, Any] | None: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def epoch_stats(self) -> dict[str, Any]: ...


@dataclass
class EpochSettings:
    """How ``run_epoch`` runs: the cap on optimizer steps per epoch, logging and saving cadence, and the feed's
    read-ahead (``prefetch`` batches in a thread; only with loader ``workers``)."""

    log_every: int
    save_every: int
    max_steps: int | None = None  # per epoch (smoke runs)
    prefetch: int = 0
    workers: int = 0
    progress: bool = True

    @classmethod
    def from_run(cls, run: RunOptions, *, prefetch: int = 0, workers: int = 0) -> EpochSettings:
        return cls(
            log_every=run.log_every,
            save_every=run.save_every,
            max_steps=run.max_steps_per_epoch,
            prefetch=prefetch,
            workers=workers,
        )


@dataclass
class Validation:
    """How ``Engine.fit`` validates after every epoch: ``evaluate(model)`` returns the metrics of one model on the
    validation split (collective: every rank calls it), ``headline`` the ``(key, label)`` pairs of the epoch's
    log line (the first one also for the EMA)."""

    evaluate: Callable[[nn.Module], dict[str, Any]]
    headline: tuple[tuple[str, str], ...]

    def summary(self, record: dict[str, Any]) -> str:
        parts = [f"{label} {record[key]:.4f}" for key, label in self.headline]
        if "ema" in record:
            key, label = self.headline[0]
            parts.append(f"EMA {label} {record['ema'][key]:.4f}")
        return ", ".join(parts)


def epoch_steps(loader: Any, accum_steps: int, max_steps: int | None) -> int:
    """Optimizer steps of an epoch (or the rest of an elastically resumed one): whole steps, capped."""
    steps = len(loader) // accum_steps
    return steps if max_steps is None else min(steps, max_steps)


def steps_per_epoch(loader: Any, *, batch_size: int, accum_steps: int = 1, max_steps: int | None = None) -> int:
    """``epoch_steps`` of the training loader; a split too small for one optimizer step is a ``ConfigError``."""
    steps = epoch_steps(loader, accum_steps, max_steps)
    if steps < 1:
        raise ConfigError(
            f"the train split ({len(loader)} batches of {batch_size} per rank) gives no full optimizer step per "
            "epoch: lower --batch-size" + (" (or --accum-steps)" if accum_steps > 1 else "")
        )
    return steps


class Engine:
    """One rank's training state (module docstring). Collective methods must be called on every rank."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: np.ndarray,
        *,
        train_loader: TrainLoader,
        device: torch.device,
        info: du.DistInfo,
        checkpoints: CheckpointManager,
        metrics: MetricsWriter,
        schema: str,
        checkpoint_extra: dict[str, Any],
        batch_size: int,
        amp: str = "none",
        ema_decay: float | None = None,
        grad_clip: float | None = None,
        accum_steps: int = 1,
        compile: bool = False,  # noqa: A002 - the option's name
        seed: int = 0,
    ) -> None:
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.train_loader = train_loader  # its position goes into every checkpoint
        self.device, self.info, self.checkpoints, self.metrics = device, info, checkpoints, metrics
        self.schema = schema
        self.checkpoint_extra = checkpoint_extra  # what the command adds to every checkpoint (model name, config...)
        self.grad_clip, self.accum_steps, self.seed = grad_clip, accum_steps, seed
        self.batch_size = batch_size  # per rank and (micro-)batch
        self.amp_dtype = autocast_dtype(amp, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype is torch.float16)
        self.ema = ModelEma(model, decay=ema_decay) if ema_decay is not None else None
        self.pos = Position()
        wrapped: nn.Module = model
        if info.enabled:
            wrapped = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.wrapped = torch.compile(wrapped) if compile else wrapped

    @property
    def main(self) -> bool:
        return self.info.rank == 0

    @property
    def global_batch(self) -> int:
        """Samples one optimizer step consumes over all ranks."""
        return self.batch_size * self.info.world_size * self.accum_steps

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def forward(self, x: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        """Logits of ``x`` under autocast (``model``: another module, e.g. the EMA; default the wrapped model)."""
        with self.autocast():
            return (model or self.wrapped)(x)

    # ------------------------------------------------------------------ one step
    def train_batch(self, compute_loss: Callable[[], dict[str, torch.Tensor]], *, last_micro: bool) -> dict:
        """Forward + backward of one (micro-)batch; ``compute_loss()`` returns ``{"loss": total, ...parts}``."""
        # Gradient accumulation: no all-reduce until the last micro-batch.
        sync = last_micro or not self.info.enabled
        with contextlib.nullcontext() if sync else self.wrapped.no_sync():
            losses = compute_loss()
            self.scaler.scale(losses["loss"] / self.accum_steps).backward()
        return losses

    def optimizer_step(self) -> float:
        """One optimizer step at the schedule's lr for the current progress; returns that lr.

        The schedule is indexed by samples seen, in optimizer steps of the current configuration: the step
        count itself in a run that keeps its world size, and the same point of the schedule after an elastic
        resume on another number of ranks (whose steps hold another number of samples).
        """
        lr = float(self.schedule[min(self.pos.samples // self.global_batch, len(self.schedule) - 1)])
        set_lr(self.optimizer, lr)
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        self.pos.step += 1
        self.pos.samples += self.global_batch
        return lr

    # ------------------------------------------------------------------ the epochs
    def fit(
        self,
        epochs: int,
        *,
        feed: Callable,
        compute_loss: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]],
        validation: Validation,
        settings: EpochSettings,
    ) -> dict[str, Any]:
        """Train from the current position to the end of epoch ``epochs - 1``; returns the last validation metrics
        of the model (``{}`` when no epoch was left).

        Per epoch: the rest of the epoch (``run_epoch``), rank 0's buffers to every rank, ``validation`` of the
        model (and the EMA), one ``val`` record in ``metrics.jsonl`` and one log line, and a checkpoint.
        ``feed(images, labels, seed=...)`` puts a loader batch on the device as ``(x, y)``;
        ``compute_loss(x, y)`` returns ``{"loss": total, ...parts}`` (every entry is logged).
        """
        last: dict[str, Any] = {}
        while self.pos.epoch < epochs:
            self.run_epoch(feed, compute_loss, settings)
            epoch = self.pos.epoch
            self.end_epoch()
            last = validation.evaluate(self.model)
            record = {"kind": "val", "epoch": epoch, "step": self.pos.step, **last}
            if self.ema is not None:
                record["ema"] = validation.evaluate(self.ema.module)
            self.metrics.write(record)
            log.info("epoch %d: val %s", epoch, validation.summary(record))
            self.save()
        return last

    def run_epoch(
        self,
        feed: Callable,
        compute_loss: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]],
        settings: EpochSettings,
    ) -> None:
        """The rest of epoch ``pos.epoch`` from batch ``pos.batch_in_epoch``; checkpoints every ``save_every``
        optimizer steps (not at the epoch's end: ``fit`` saves after validating)."""
        pos, epoch, loader, metrics = self.pos, self.pos.epoch, self.train_loader, self.metrics
        loader.set_epoch(epoch, start_step=pos.batch_in_epoch)
        total = epoch_steps(loader, self.accum_steps, settings.max_steps) * self.accum_steps
        bar = self._progress(total) if settings.progress else None
        window = LossWindow(self.device)
        global_batch = self.batch_size * self.info.world_size  # images per (micro-)batch over all ranks

        def seed_of(batch: int) -> int:
            return batch_seed(self.seed, epoch, batch, self.info.rank)

        batches = feed_batches(
            loader,
            feed,
            device=self.device,
            start=pos.batch_in_epoch,
            seed_of=seed_of,
            prefetch=settings.prefetch,
            workers=settings.workers,
        )
        self.model.train()
        with contextlib.ExitStack() as stack:
            stream = stack.enter_context(contextlib.closing(batches))
            if bar is not None:
                stack.callback(bar.close)  # also when the epoch ends in an error: the bar is done before it prints
            for batch_idx, x, y in timed(iter(stream), window):
                if batch_idx >= total:
                    break
                last_micro = (batch_idx + 1) % self.accum_steps == 0
                window.add(self.train_batch(lambda x=x, y=y: compute_loss(x, y), last_micro=last_micro))
                if bar is not None:
                    bar.update(1)
                if not last_micro:
                    continue
                lr = self.optimizer_step()
                pos.batch_in_epoch = batch_idx + 1
                end = pos.batch_in_epoch == total
                if pos.step % settings.log_every == 0 or end:
                    means, speed = window.take(global_batch)
                    if not math.isfinite(means["loss"]):
                        raise ConfigError(
                            f"loss is {means['loss']} at step {pos.step}: lower --lr or use --amp bf16/none"
                        )
                    metrics.write({"kind": "train", "epoch": epoch, "step": pos.step, **means, "lr": lr, **speed})
                    if bar is not None:
                        bar.set_postfix(
                            loss=f"{means['loss']:.3f}",
                            lr=f"{lr:.2e}",
                            img_s=f"{speed['img_per_s']:.0f}",
                            data_wait=f"{speed['data_wait']:.0%}",
                        )
                if pos.step % settings.save_every == 0 and not end:
                    self.save()
        self._report_loader(epoch)

    def _report_loader(self, epoch: int) -> None:
        """The loader's counts of the epoch (bad samples, unreadable shards, padding) into the log and metrics."""
        stats = self.train_loader.epoch_stats()
        if not stats:
            return
        problems = {k: stats[k] for k in ("corrupt_skipped", "shard_errors") if stats.get(k)}
        if problems:
            log.warning("epoch %d, rank %d: the loader skipped bad data: %s", epoch, self.info.rank, problems)
        self.metrics.write({"kind": "loader", "epoch": epoch, **stats})

    def _progress(self, total: int) -> Any:
        if not self.main:
            return None
        from in21k.progress import progress

        return progress(total=total, initial=self.pos.batch_in_epoch, desc=f"epoch {self.pos.epoch}", unit="batch")

    def end_epoch(self) -> None:
        """Rank 0's buffers to every rank, then move the position to the next epoch's start."""
        self.sync_buffers()
        self.pos.epoch, self.pos.batch_in_epoch = self.pos.epoch + 1, 0

    def sync_buffers(self) -> None:
        """Rank 0's buffers (BatchNorm statistics) to every rank, for the model and the EMA.

        Each rank's forward updates its own statistics, so after an epoch the ranks differ in them (and in
        the EMA built from them); broadcasting makes every rank validate and save the same weights.
        """
        if not du.is_enabled():
            return
        for module in (self.model, self.ema.module if self.ema is not None else None):
            if module is not None:
                for buf in module.buffers():
                    torch.distributed.broadcast(buf, src=0)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, **extra: Any) -> dict[str, Any]:
        """The checkpoint of this state (collective: gathers every rank's RNG state)."""
        # Every rank's RNG state: dropout/drop-path draws differ per rank and must continue exactly.
        rngs: list[Any] = [None] * du.get_world_size()
        if du.is_enabled():
            torch.distributed.all_gather_object(rngs, rng_state())
        else:
            rngs = [rng_state()]
        loader = self.train_loader.state_dict(epoch=self.pos.epoch, step=self.pos.batch_in_epoch)
        return {
            "schema": self.schema,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "position": self.pos.to_dict(),
            "rng": rngs,
            "world_size": du.get_world_size(),
            "loader": loader,
            **extra,
        }

    def save(self) -> None:
        """Checkpoint at the current position (collective: every rank calls it; rank 0 writes)."""
        state = self.state_dict(**self.checkpoint_extra)
        if self.main:
            log.info("saved %s", self.checkpoints.save(state, self.pos.step))
        du.barrier()

    def restore(self, path: Path) -> dict[str, Any]:
        """Load a checkpoint of this engine's schema into the state; returns the whole checkpoint."""
        state = load_checkpoint(path)
        if state.get("schema") != self.schema:
            raise DataError(f"{path} is not a {self.schema} checkpoint (found {state.get('schema')!r})")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if state.get("ema") is None:
                log.warning("checkpoint %s has no EMA state; the EMA restarts from the current weights", path)
                self.ema.module.load_state_dict(self.model.state_dict())
            else:
                self.ema.load_state_dict(state["ema"])
        rngs = state.get("rng") or []
        if len(rngs) == du.get_world_size():
            set_rng_state(rngs[du.get_rank()])
        else:
            log.warning("checkpoint from %s ranks, now %s: RNG states not restored", len(rngs), du.get_world_size())
        self.pos = Position.from_dict(state["position"], global_batch=self.global_batch)
        self.metrics.resumed_at(self.pos.step)
        if state.get("loader"):
            # The loader decides where the epoch continues: at the same batch with the same configuration, or,
            # on another world size or worker count, at the start of the rest of the epoch's unseen samples.
            self.train_loader.load_state_dict(state["loader"])
            self.pos.batch_in_epoch = self.train_loader.start_step
        log.info(
            "resumed from %s at step %d (epoch %d, batch %d)",
            path,
            self.pos.step,
            self.pos.epoch,
            self.pos.batch_in_epoch,
        )
        return state

    def start(self, resume_from: Path | None) -> None:
        """Restore the checkpoint ``resume_from`` (``resolve_resume``), or seed this rank's own random streams."""
        if resume_from is not None:
            self.restore(resume_from)
            return
        # Rank-specific streams for the model's own randomness (dropout, drop-path) and for what draws from the
        # global generators; a resume restores them instead.
        s = self.seed * 1000 + self.info.rank + 1
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)

    def save_model(self, path: Path, task: str, **fields: Any) -> None:
        """Rank 0 writes the final model file (``rundir.model_file``: the model's and the EMA's weights and
        ``fields``), atomically."""
        if self.main:
            ema = self.ema.state_dict() if self.ema is not None else None
            atomic_save(model_file(task, model=self.model.state_dict(), ema=ema, **fields), path)

    def finish(self) -> str:
        """Every rank's parameter digest; raises if the replicas diverged (a bug). Returns the digest. Closes the
        event files."""
        self.metrics.close()
        return du.check_replicas_agree(self.model)


def resolve_resume(checkpoints: CheckpointManager, resume: str | None) -> Path | None:
    """``--resume``: ``auto`` (the newest checkpoint, if any) or a file; rank 0 decides for every rank (collective)."""
    path = checkpoints.resolve(resume)
    if du.is_enabled():
        box = [str(path) if path else None]
        torch.distributed.broadcast_object_list(box, src=0)
        path = Path(box[0]) if box[0] else None
    if path is None and resume == "auto":
        log.info("--resume auto: no checkpoint in %s yet, starting from scratch", checkpoints.dir)
    return path


def eval_logits(
    model: nn.Module, loader: Any, feed: Callable, autocast: Callable, *, max_batches: int | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(float32 logits, labels)`` of the validation batches, the model in eval mode.

    What every command's ``Validation.evaluate`` iterates; callers run it under ``torch.no_grad()`` (a grad-mode
    switch inside a generator would leak into the caller between yields). The model's training mode is
    restored when the loop ends.
    """
    was_training = model.training
    model.eval()
    loader.set_epoch(0)
    try:
        for i, (images, labels) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            x, y = feed(images, labels)
            with autocast():
                logits = model(x)
            yield logits.float(), y
    finally:
        model.train(was_training)
