"""The training loop of ``in21k train``: a few ``build_*`` helpers and a short ``do_train``.

Run one process, or one per GPU (or CPU slot) under torchrun. Every rank reads its own shards through
``in21k.loaders.create_loader``, trains a DDP-wrapped timm model with the semantic softmax loss (or
plain cross-entropy), validates every epoch (semantic top-1 and per-level accuracy, all-reduced), and
rank 0 writes ``metrics.jsonl``, checkpoints and, at the end, ``curves.png`` and ``model.pt``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from in21k.config import config_to_dict, save_config
from in21k.training import distributed as du
from in21k.training.checkpoint import CheckpointManager, atomic_save, load_checkpoint, rng_state, set_rng_state
from in21k.training.config import TrainConfig
from in21k.training.curves import plot_curves
from in21k.training.feed import DevicePrefetcher, build_feed
from in21k.training.kd import SemanticKDLoss, Teacher, build_teacher
from in21k.training.levels import SemanticLevels
from in21k.training.losses import build_loss
from in21k.training.metrics import SemanticAccuracy, semantic_accuracy
from in21k.training.model import build_model, load_init_checkpoint
from in21k.training.optim import ModelEma, autocast_dtype, build_optimizer, build_schedule, set_lr

log = logging.getLogger(__name__)


@dataclass
class Position:
    """Where training stands: optimizer steps done, and the loader position within the current epoch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


# ----------------------------------------------------------------------------------------- build_*
def setup_logging(run_dir: Path, rank: int) -> logging.Handler:
    """Every rank logs to ``RUN_DIR/logs/rank-R.log``; only rank 0 keeps console output (errors aside)."""
    path = run_dir / "logs" / f"rank-{rank}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    handler = logging.FileHandler(path)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    if rank != 0:
        for h in root.handlers:
            if type(h) is logging.StreamHandler:
                h.setLevel(logging.ERROR)
    return handler


def build_device(cfg: TrainConfig, info: du.DistInfo) -> torch.device:
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("--device cuda but CUDA is not available; use --device cpu")
    return torch.device("cuda", info.local_rank)


def build_loader(cfg: TrainConfig, info: du.DistInfo, *, split: str, train: bool, decode: str):
    from in21k.loaders import create_loader

    batch = cfg.batch_size if train else (cfg.val_batch_size or 2 * cfg.batch_size)
    return create_loader(
        data=cfg.data, split=split, batch_size=batch, num_workers=cfg.num_workers, seed=cfg.seed, train=train,
        transform=cfg.transform, image_size=cfg.image_size, decode=decode, rank=info.rank, world_size=info.world_size,
    )  # fmt: skip


def build_tree(cfg: TrainConfig):
    from in21k.tree import SemanticTree

    path = cfg.tree or str(Path(cfg.data) / "tree.json")
    if cfg.tree is None and not Path(path).exists():
        raise ValueError(f"{path} not found: --data must be a prepared dataset (in21k prepare), or give --tree")
    return SemanticTree.load(path)


def build_train_model(cfg: TrainConfig, num_classes: int, device: torch.device, *, init: str | None) -> nn.Module:
    torch.manual_seed(cfg.seed)  # same init on every rank (DDP also broadcasts rank 0's weights)
    model = build_model(name=cfg.model, num_classes=num_classes, image_size=cfg.image_size)
    if init:
        load_init_checkpoint(model, init)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def checkpoint_state(cfg, model, optimizer, scaler, ema, pos: Position, tree) -> dict[str, Any]:
    # Every rank's RNG state: dropout/drop-path draws differ per rank and must continue exactly.
    rngs = [None] * du.get_world_size()
    if du.is_enabled():
        torch.distributed.all_gather_object(rngs, rng_state())
    else:
        rngs = [rng_state()]
    return {
        "schema": "in21k.train-checkpoint/1",
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "position": {"step": pos.step, "epoch": pos.epoch, "batch_in_epoch": pos.batch_in_epoch},
        "rng": rngs,
        "world_size": du.get_world_size(),
        "model_name": cfg.model,
        "num_classes": tree.num_classes,
        "config": config_to_dict(cfg),
    }


def restore(path: Path, model, optimizer, scaler, ema) -> Position:
    state = load_checkpoint(path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if ema is not None:
        if state.get("ema") is None:
            log.warning("checkpoint %s has no EMA state; the EMA restarts from the current weights", path)
            ema.module.load_state_dict(model.state_dict())
        else:
            ema.load_state_dict(state["ema"])
    rngs = state.get("rng") or []
    if len(rngs) == du.get_world_size():
        set_rng_state(rngs[du.get_rank()])
    else:
        log.warning("checkpoint from %s ranks, now %s: RNG states not restored", len(rngs), du.get_world_size())
    p = state["position"]
    pos = Position(step=int(p["step"]), epoch=int(p["epoch"]), batch_in_epoch=int(p["batch_in_epoch"]))
    log.info("resumed from %s at step %d (epoch %d, batch %d)", path, pos.step, pos.epoch, pos.batch_in_epoch)
    return pos


class MetricsWriter:
    """JSON lines on rank 0 (appends, so a resumed run continues the same file)."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


# ----------------------------------------------------------------------------------------- loops
def eval_logits(model, loader, feed, autocast, *, max_batches: int | None):
    """``(float32 logits, labels)`` of the validation batches, the model in eval mode.

    Shared by the semantic validation here and the single-label one of ``finetune``; callers run it under
    ``torch.no_grad()`` (a grad-mode switch inside a generator would leak into the caller between yields).
    The model's training mode is restored when the loop ends.
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


@torch.no_grad()
def evaluate(model, loader, feed, levels: SemanticLevels, loss_fn, autocast, *, max_batches: int | None) -> dict:
    acc: SemanticAccuracy | None = None
    sums = torch.zeros(3, dtype=torch.float64, device=levels.targets.device)  # loss sum, top1 correct, samples
    for logits, y in eval_logits(model, loader, feed, autocast, max_batches=max_batches):
        batch_acc = semantic_accuracy(logits, y, levels)
        acc = batch_acc if acc is None else acc + batch_acc
        sums += torch.stack([loss_fn(logits, y).double() * len(y), (logits.argmax(1) == y).sum().double(),
                             torch.tensor(float(len(y)), dtype=torch.float64, device=sums.device)])  # fmt: skip
    if acc is None:
        zeros = torch.zeros(levels.num_levels, dtype=torch.long, device=sums.device)
        acc = SemanticAccuracy(zeros, zeros.clone(), levels.level_ids)
    acc = acc.all_reduce()
    if du.is_enabled():
        torch.distributed.all_reduce(sums)
    n = max(float(sums[2]), 1.0)
    return {**acc.to_dict(), "loss": float(sums[0]) / n, "top1": float(sums[1]) / n, "samples": int(sums[2])}


@dataclass
class Run:
    """Everything one rank trains with; built by ``build_run``."""

    cfg: TrainConfig
    info: du.DistInfo
    device: torch.device
    run_dir: Path
    tree: Any
    train_loader: Any
    val_loader: Any
    train_feed: Any
    val_feed: Any
    raw_model: nn.Module  # unwrapped: what is saved
    model: nn.Module  # DDP- and/or compile-wrapped: what is called
    loss_fn: nn.Module
    levels: SemanticLevels
    optimizer: torch.optim.Optimizer
    schedule: Any
    scaler: torch.amp.GradScaler
    ema: ModelEma | None
    amp_dtype: torch.dtype | None
    ckpts: CheckpointManager
    metrics: MetricsWriter
    steps_per_epoch: int
    teacher: Teacher | None = None  # semantic KD (--teacher); never saved into checkpoints
    kd_fn: SemanticKDLoss | None = None

    @property
    def main(self) -> bool:
        return self.info.rank == 0

    @property
    def batches_per_epoch(self) -> int:
        return self.steps_per_epoch * self.cfg.accum_steps

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def save(self, pos: Position) -> None:
        # Collective (gathers every rank's RNG state): every rank calls it, rank 0 writes.
        state = checkpoint_state(self.cfg, self.raw_model, self.optimizer, self.scaler, self.ema, pos, self.tree)
        if self.main:
            log.info("saved %s", self.ckpts.save(state, pos.step))
        du.barrier()

    def validate(self, model: nn.Module) -> dict[str, Any]:
        return evaluate(model, self.val_loader, self.val_feed, self.levels, self.loss_fn, self.autocast,
                        max_batches=self.cfg.val_max_batches)  # fmt: skip


def build_run(cfg: TrainConfig, *, run_dir: Path, info: du.DistInfo, device: torch.device) -> tuple[Run, Position]:
    tree = build_tree(cfg)
    decode = "none" if cfg.gpu_decode else "cpu"
    train_loader = build_loader(cfg, info, split="train", train=True, decode=decode)
    val_loader = build_loader(cfg, info, split="validation", train=False, decode=decode)
    if train_loader.num_classes != tree.num_classes:
        raise ValueError(
            f"the dataset has {train_loader.num_classes} classes but the tree {tree.num_classes}; "
            "give the tree.json written by the same in21k prepare run"
        )
    feeds = [
        build_feed(gpu_decode=cfg.gpu_decode, device=device, image_size=cfg.image_size, train=train,
                   mean=train_loader.mean, std=train_loader.std, channels_last=cfg.channels_last)
        for train in (True, False)
    ]  # fmt: skip
    ckpts = CheckpointManager(run_dir, keep_last=cfg.keep_last)
    resume_path = ckpts.resolve(cfg.resume)
    if du.is_enabled():  # rank 0 decides, so every rank resumes from the same file
        box = [str(resume_path) if resume_path else None]
        torch.distributed.broadcast_object_list(box, src=0)
        resume_path = Path(box[0]) if box[0] else None
    if resume_path is not None and cfg.init:
        log.info("resuming from %s: --init %s is not applied", resume_path, cfg.init)
    model = build_train_model(cfg, tree.num_classes, device, init=cfg.init if resume_path is None else None)
    loss_fn = build_loss(cfg.loss, tree, label_smoothing=cfg.label_smoothing, max_level_weight=cfg.max_level_weight)
    loss_fn.to(device)
    levels = loss_fn.levels if hasattr(loss_fn, "levels") else SemanticLevels(tree).to(device)
    optimizer = build_optimizer(model, name=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(train_loader) // cfg.accum_steps
    if cfg.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    schedule = build_schedule(
        cfg.schedule, steps_per_epoch * cfg.epochs, lr=cfg.lr, pct_start=cfg.pct_start, div_factor=cfg.div_factor,
        final_div_factor=cfg.final_div_factor, warmup_steps=cfg.warmup_steps, min_lr=cfg.min_lr,
    )  # fmt: skip
    amp_dtype = autocast_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    ema = ModelEma(model, decay=cfg.ema_decay) if cfg.ema else None
    teacher = kd_fn = None
    if cfg.teacher:
        # Rebuilt from --teacher on every start, a resume included: checkpoints hold the student only. Built
        # before the RNG states are set or restored, so a resumed run's random streams match an uninterrupted one.
        teacher = build_teacher(
            cfg.teacher, tree=tree, device=device, model_name=cfg.teacher_model, channels_last=cfg.channels_last,
            mean=train_loader.mean, std=train_loader.std,
        )  # fmt: skip
        kd_fn = SemanticKDLoss(levels).to(device)
    pos = Position()
    if resume_path is not None:
        pos = restore(resume_path, model, optimizer, scaler, ema)
    else:
        if cfg.resume == "auto":
            log.info("--resume auto: no checkpoint in %s yet, starting from scratch", ckpts.dir)
        # Rank-specific seed for the model's own randomness (dropout, drop-path); a resume restores it instead.
        torch.manual_seed(cfg.seed * 1000 + info.rank + 1)
    wrapped: nn.Module = model
    if info.enabled:
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        wrapped = torch.compile(wrapped)
    run = Run(
        cfg=cfg, info=info, device=device, run_dir=run_dir, tree=tree, train_loader=train_loader,
        val_loader=val_loader, train_feed=feeds[0], val_feed=feeds[1], raw_model=model, model=wrapped,
        loss_fn=loss_fn, levels=levels, optimizer=optimizer, schedule=schedule, scaler=scaler, ema=ema,
        amp_dtype=amp_dtype, ckpts=ckpts, metrics=MetricsWriter(run_dir / "metrics.jsonl", info.rank == 0),
        steps_per_epoch=steps_per_epoch, teacher=teacher, kd_fn=kd_fn,
    )  # fmt: skip
    return run, pos


def optimizer_step(run: Run, pos: Position) -> float:
    """One optimizer step at the schedule's lr for ``pos.step``; returns that lr."""
    lr = float(run.schedule[pos.step])
    set_lr(run.optimizer, lr)
    if run.cfg.grad_clip is not None:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.raw_model.parameters(), run.cfg.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    if run.ema is not None:
        run.ema.update(run.raw_model)
    return lr


def train_epoch(run: Run, pos: Position) -> None:
    """The rest of epoch ``pos.epoch`` from batch ``pos.batch_in_epoch``; checkpoints every ``save_every`` steps."""
    cfg, epoch = run.cfg, pos.epoch
    run.train_loader.set_epoch(epoch, start_step=pos.batch_in_epoch)
    bar = _progress(run.main, run.batches_per_epoch, pos)
    window = _Window(run.device)
    kd_window = _Window(run.device) if run.teacher is not None else None
    global_batch = cfg.batch_size * run.info.world_size

    def seed_of(batch_idx: int) -> int:  # per (seed, epoch, batch, rank): resume-exact augmentation
        return ((cfg.seed * 1_000_003 + epoch) * 1_000_003 + batch_idx) * 1009 + run.info.rank

    batches = _batches(cfg, run.train_loader, run.train_feed, run.device, pos.batch_in_epoch, seed_of)
    with contextlib.closing(batches) as stream:
        for batch_idx, x, y in stream:
            if batch_idx >= run.batches_per_epoch:
                break
            last_micro = (batch_idx + 1) % cfg.accum_steps == 0
            # Gradient accumulation: no all-reduce until the last micro-batch.
            sync = contextlib.nullcontext() if (last_micro or not run.info.enabled) else run.model.no_sync()
            with sync:
                with run.autocast():
                    logits = run.model(x)
                loss = run.loss_fn(logits, y)
                if run.teacher is not None:
                    with run.autocast():
                        teacher_logits = run.teacher(x)
                    kd = run.kd_fn(logits, teacher_logits)
                    kd_window.add(kd)
                    loss = loss + cfg.kd_weight * kd
                run.scaler.scale(loss / cfg.accum_steps).backward()
            window.add(loss)
            if bar is not None:
                bar.update(1)
            if not last_micro:
                continue
            lr = optimizer_step(run, pos)
            pos.step += 1
            pos.batch_in_epoch = batch_idx + 1
            if pos.step % cfg.log_every == 0 or pos.batch_in_epoch == run.batches_per_epoch:
                mean_loss, img_s = window.take(global_batch)
                if not math.isfinite(mean_loss):
                    raise RuntimeError(f"loss is {mean_loss} at step {pos.step}: lower --lr or use --amp bf16/none")
                record = {
                    "kind": "train",
                    "epoch": epoch,
                    "step": pos.step,
                    "loss": mean_loss,
                    "lr": lr,
                    "img_per_s": img_s,
                }
                if kd_window is not None:  # "loss" is the total; "kd_loss" the unweighted KD part
                    record["kd_loss"] = kd_window.take(global_batch)[0]
                run.metrics.write(record)
                if bar is not None:
                    bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.2e}", img_s=f"{img_s:.0f}")
            if pos.step % cfg.save_every == 0 and pos.batch_in_epoch < run.batches_per_epoch:
                run.save(pos)
    if bar is not None:
        bar.close()


class _Window:
    """Loss sum and timing since the last metrics line (the loss stays on the device until then)."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), device=device, dtype=torch.float64)
        self.batches, self.start = 0, time.perf_counter()

    def add(self, loss: torch.Tensor) -> None:
        self.loss += loss.detach().double()
        self.batches += 1

    def take(self, global_batch: int) -> tuple[float, float]:
        mean_loss = float(du.all_reduce_mean(self.loss / max(self.batches, 1)))
        img_s = self.batches * global_batch / max(time.perf_counter() - self.start, 1e-9)
        self.loss.zero_()
        self.batches, self.start = 0, time.perf_counter()
        return mean_loss, round(img_s, 1)


def do_train(cfg: TrainConfig, *, run_dir: Path, info: du.DistInfo, device: torch.device) -> dict[str, Any]:
    if info.rank == 0:
        save_config(cfg, run_dir / "config.yaml")
    run, pos = build_run(cfg, run_dir=run_dir, info=info, device=device)
    log.info(
        "training %s on %s: %d classes, %d levels in the loss, %d steps/epoch x %d epochs, world size %d",
        cfg.model, device, run.tree.num_classes, run.levels.num_levels, run.steps_per_epoch, cfg.epochs,
        info.world_size,
    )  # fmt: skip
    last_val: dict[str, Any] = {}
    run.model.train()
    while pos.epoch < cfg.epochs:
        train_epoch(run, pos)
        last_val = run.validate(run.model)
        record = {"kind": "val", "epoch": pos.epoch, "step": pos.step, **last_val}
        if run.ema is not None:
            record["ema"] = run.validate(run.ema.module)
        run.metrics.write(record)
        log.info("epoch %d: val semantic top-1 %.4f, top-1 %.4f, loss %.4f", pos.epoch, last_val["semantic_top1"],
                 last_val["top1"], last_val["loss"])  # fmt: skip
        pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0
        run.save(pos)
    if run.main:
        final = {
            "model": run.raw_model.state_dict(), "ema": run.ema.state_dict() if run.ema is not None else None,
            "model_name": cfg.model, "image_size": cfg.image_size, "mean": list(run.train_loader.mean),
            "std": list(run.train_loader.std), "tree": run.tree.to_dict(), "config": config_to_dict(cfg),
        }  # fmt: skip
        atomic_save(final, run_dir / "model.pt")
        if cfg.plot:
            plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png")
    digest = du.check_replicas_agree(run.raw_model)
    return {"run_dir": str(run_dir), "epochs": cfg.epochs, "steps": pos.step, "world_size": info.world_size,
            "param_digest": digest, "val": last_val}  # fmt: skip


def _batches(cfg: TrainConfig, loader, feed, device: torch.device, start: int, seed_of):
    """``(batch index, x, y)`` on the device; with loader workers, the feed runs ahead in a thread."""
    if cfg.prefetch > 0 and cfg.num_workers > 0:
        # (Without workers the loader itself runs in the consuming thread and reseeds torch's global
        # generator per batch, which must stay on the training thread.)
        yield from DevicePrefetcher(loader, feed, device=device, depth=cfg.prefetch, start=start, seed_of=seed_of)
        return
    for i, (images, labels) in enumerate(loader, start=start):
        x, y = feed(images, labels, seed=seed_of(i))
        yield i, x, y


def _progress(main: bool, total: int, pos: Position):
    if not main:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=pos.batch_in_epoch, desc=f"epoch {pos.epoch}", unit="batch", dynamic_ncols=True)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run ``in21k train`` in this process (one rank of a torchrun job, or alone)."""
    info = du.init_distributed()
    run_dir = Path(cfg.out)
    handler = setup_logging(run_dir, info.rank)
    try:
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif torch.cuda.is_available():
            torch.backends.cudnn.benchmark = True
        device = build_device(cfg, info)
        return do_train(cfg, run_dir=run_dir, info=info, device=device)
    finally:
        du.destroy()
        logging.getLogger().removeHandler(handler)
        handler.close()
