"""``in21k train``: semantic-softmax training of a timm model, a composition over ``training.engine``.

Run one process, or one per GPU (or CPU slot) under torchrun. Every rank reads its own shards through
``in21k.loaders.create_loader`` (from local disk or any storage URL), trains a DDP-wrapped timm model with
the semantic softmax loss (or plain cross-entropy; optionally plus semantic KD from a teacher), validates
every epoch (semantic top-1 and per-level accuracy, all-reduced), and rank 0 writes ``metrics.jsonl``,
checkpoints and, at the end, ``curves.png`` and ``model.pt`` (the run directory: ``training.rundir``).

A sample's way through the code: ``build_loader`` (the streaming loader: shard -> decoded, augmented uint8
batch) -> ``build_feed`` (to the device, normalised; on the device also decoded with ``--gpu-decode``) ->
``Engine.run_epoch`` -> ``Run.compute_loss`` (the model's logits -> ``SemanticSoftmaxLoss``, plus KD) -> the
engine's backward and optimizer step. After each epoch ``Engine.fit`` calls ``Run.validate``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from in21k.config import saved_config
from in21k.errors import DataError
from in21k.training import distributed as du
from in21k.training.checkpoint import CheckpointManager
from in21k.training.config import TrainConfig
from in21k.training.curves import plot_curves
from in21k.training.engine import (
    Engine,
    EpochSettings,
    Validation,
    eval_logits,
    resolve_resume,
    run_session,
    steps_per_epoch,
)
from in21k.training.feed import build_feed
from in21k.training.kd import SemanticKDLoss, Teacher, build_teacher
from in21k.training.levels import SemanticLevels
from in21k.training.losses import build_loss
from in21k.training.metrics import SemanticAccuracy, semantic_accuracy
from in21k.training.model import build_model, load_init_checkpoint
from in21k.training.optim import build_optimizer, build_schedule
from in21k.training.rundir import CHECKPOINT_SCHEMAS, SEMANTIC, MetricsWriter, RunDir

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- build_*
def build_tree(cfg: TrainConfig, dataset: Any):
    """``--tree`` if given, else the prepared dataset's own tree (read from wherever the dataset lies)."""
    from in21k.tree import SemanticTree

    if cfg.tree:
        return SemanticTree.load(cfg.tree, storage_options=cfg.loader.storage_options)
    return SemanticTree.from_dict(dataset.tree_data())


def build_loader(cfg: TrainConfig, info: du.DistInfo, dataset: Any, *, split: str, train: bool):
    from in21k.loaders import create_loader

    batch = cfg.batch_size if train else (cfg.val_batch_size or 2 * cfg.batch_size)
    return create_loader(
        data=dataset,
        split=split,
        batch_size=batch,
        options=cfg.loader,
        seed=cfg.seed,
        train=train,
        image_size=cfg.image_size,
        decode="none" if cfg.gpu_decode else "cpu",
        rank=info.rank,
        world_size=info.world_size,
    )


def build_train_model(cfg: TrainConfig, num_classes: int, device: torch.device, *, init: str | None) -> nn.Module:
    torch.manual_seed(cfg.seed)  # same init on every rank (DDP also broadcasts rank 0's weights)
    model = build_model(name=cfg.model, num_classes=num_classes, image_size=cfg.image_size)
    if init:
        load_init_checkpoint(model, init)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


# ----------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model, loader, feed, levels: SemanticLevels, loss_fn, autocast, *, max_batches: int | None) -> dict:
    acc: SemanticAccuracy | None = None
    sums = torch.zeros(3, dtype=torch.float64, device=levels.targets.device)  # loss sum, top1 correct, samples
    for logits, y in eval_logits(model, loader, feed, autocast, max_batches=max_batches):
        batch_acc = semantic_accuracy(logits, y, levels)
        acc = batch_acc if acc is None else acc + batch_acc
        sums += torch.stack(
            [
                loss_fn(logits, y).double() * len(y),
                (logits.argmax(1) == y).sum().double(),
                torch.tensor(float(len(y)), dtype=torch.float64, device=sums.device),
            ]
        )
    if acc is None:
        zeros = torch.zeros(levels.num_levels, dtype=torch.long, device=sums.device)
        acc = SemanticAccuracy(zeros, zeros.clone(), levels.level_ids)
    acc = acc.all_reduce()
    if du.is_enabled():
        torch.distributed.all_reduce(sums)
    n = max(float(sums[2]), 1.0)
    return {**acc.to_dict(), "loss": float(sums[0]) / n, "top1": float(sums[1]) / n, "samples": int(sums[2])}


# ----------------------------------------------------------------------------------------- the run
@dataclass
class Run:
    """What one rank trains with beyond the engine: data, tree, loss, KD."""

    cfg: TrainConfig
    engine: Engine
    tree: Any
    train_loader: Any
    val_loader: Any
    train_feed: Any
    val_feed: Any
    loss_fn: nn.Module
    levels: SemanticLevels
    teacher: Teacher | None = None  # semantic KD (--teacher); never saved into checkpoints
    kd_fn: SemanticKDLoss | None = None

    def compute_loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.engine.forward(x)
        loss = self.loss_fn(logits, y)
        if self.teacher is None:
            return {"loss": loss}
        with self.engine.autocast():
            teacher_logits = self.teacher(x)
        kd = self.kd_fn(logits, teacher_logits)
        # "loss" is the total; "kd_loss" the unweighted KD part.
        return {"loss": loss + self.cfg.kd_weight * kd, "kd_loss": kd}

    def validate(self, model: nn.Module) -> dict[str, Any]:
        return evaluate(
            model,
            self.val_loader,
            self.val_feed,
            self.levels,
            self.loss_fn,
            self.engine.autocast,
            max_batches=self.cfg.run.val_max_batches,
        )


def build_run(cfg: TrainConfig, *, rundir: RunDir, info: du.DistInfo, device: torch.device) -> Run:
    from in21k.dataset import PreparedDataset

    dataset = PreparedDataset.open(cfg.data, storage_options=cfg.loader.storage_options)
    tree = build_tree(cfg, dataset)
    if dataset.num_classes != tree.num_classes:
        raise DataError(
            f"the dataset has {dataset.num_classes} classes but the tree {tree.num_classes}; "
            "give the tree.json written by the same in21k prepare run"
        )
    train_loader = build_loader(cfg, info, dataset, split="train", train=True)
    val_loader = build_loader(cfg, info, dataset, split="validation", train=False)
    feeds = [
        build_feed(
            gpu_decode=cfg.gpu_decode,
            device=device,
            image_size=cfg.image_size,
            train=train,
            mean=train_loader.mean,
            std=train_loader.std,
            channels_last=cfg.channels_last,
        )
        for train in (True, False)
    ]
    checkpoints = CheckpointManager(rundir, keep_last=cfg.run.keep_last)
    resume_from = resolve_resume(checkpoints, cfg.resume)
    if resume_from is not None and cfg.init:
        log.info("resuming from %s: --init %s is not applied", resume_from, cfg.init)
    model = build_train_model(cfg, tree.num_classes, device, init=cfg.init if resume_from is None else None)
    loss_fn = build_loss(cfg.loss, tree, label_smoothing=cfg.label_smoothing, max_level_weight=cfg.max_level_weight)
    loss_fn.to(device)
    levels = loss_fn.levels if hasattr(loss_fn, "levels") else SemanticLevels(tree).to(device)
    optimizer = build_optimizer(model, name=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = steps_per_epoch(
        train_loader, batch_size=cfg.batch_size, accum_steps=cfg.accum_steps, max_steps=cfg.run.max_steps_per_epoch
    )
    schedule = build_schedule(
        cfg.schedule,
        steps * cfg.epochs,
        lr=cfg.lr,
        pct_start=cfg.pct_start,
        div_factor=cfg.div_factor,
        final_div_factor=cfg.final_div_factor,
        warmup_steps=cfg.warmup_steps,
        min_lr=cfg.min_lr,
    )
    engine = Engine(
        model,
        optimizer,
        schedule,
        train_loader=train_loader,
        device=device,
        info=info,
        checkpoints=checkpoints,
        metrics=MetricsWriter.for_run(rundir, enabled=info.rank == 0),
        schema=CHECKPOINT_SCHEMAS["train"],
        checkpoint_extra={"model_name": cfg.model, "num_classes": tree.num_classes, "config": saved_config(cfg)},
        batch_size=cfg.batch_size,
        amp=cfg.amp,
        ema_decay=cfg.ema_decay if cfg.ema else None,
        grad_clip=cfg.grad_clip,
        accum_steps=cfg.accum_steps,
        compile=cfg.compile,
        seed=cfg.seed,
    )
    teacher = kd_fn = None
    if cfg.teacher:
        # Rebuilt from --teacher on every start, a resume included: checkpoints hold the student only. Built
        # before the RNG states are set or restored, so a resumed run's random streams match an uninterrupted one.
        teacher = build_teacher(
            cfg.teacher,
            tree=tree,
            device=device,
            model_name=cfg.teacher_model,
            channels_last=cfg.channels_last,
            mean=train_loader.mean,
            std=train_loader.std,
        )
        kd_fn = SemanticKDLoss(levels).to(device)
    engine.start(resume_from)
    return Run(
        cfg=cfg,
        engine=engine,
        tree=tree,
        train_loader=train_loader,
        val_loader=val_loader,
        train_feed=feeds[0],
        val_feed=feeds[1],
        loss_fn=loss_fn,
        levels=levels,
        teacher=teacher,
        kd_fn=kd_fn,
    )


def do_train(cfg: TrainConfig, *, rundir: RunDir, info: du.DistInfo, device: torch.device) -> dict[str, Any]:
    run = build_run(cfg, rundir=rundir, info=info, device=device)
    engine = run.engine
    log.info(
        "training %s on %s: %d classes, %d levels in the loss, %d steps/epoch x %d epochs, world size %d",
        cfg.model,
        device,
        run.tree.num_classes,
        run.levels.num_levels,
        len(engine.schedule) // cfg.epochs,
        cfg.epochs,
        info.world_size,
    )
    headline = (("semantic_top1", "semantic top-1"), ("top1", "top-1"), ("loss", "loss"))
    settings = EpochSettings.from_run(cfg.run, prefetch=cfg.prefetch, workers=cfg.loader.num_workers)
    last_val = engine.fit(
        cfg.epochs,
        feed=run.train_feed,
        compute_loss=run.compute_loss,
        validation=Validation(run.validate, headline),
        settings=settings,
    )
    engine.save_model(
        rundir.model,
        SEMANTIC,
        model_name=cfg.model,
        image_size=cfg.image_size,
        mean=run.train_loader.mean,
        std=run.train_loader.std,
        config=saved_config(cfg),
        tree=run.tree.to_dict(),
    )
    if engine.main and cfg.plot:
        plot_curves(rundir.metrics, rundir.curves)
    digest = engine.finish()
    return {
        "run_dir": str(rundir.root),
        "epochs": cfg.epochs,
        "steps": engine.pos.step,
        "world_size": info.world_size,
        "param_digest": digest,
        "val": last_val,
    }


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run ``in21k train`` in this process (one rank of a torchrun job, or alone)."""
    rundir = RunDir(cfg.out)
    with run_session(rundir, cfg) as (info, device):
        return do_train(cfg, rundir=rundir, info=info, device=device)
