"""``in21k finetune``: transfer a 21K model to a single-label dataset (prepared shards or class folders).

The recipe is the original's transfer notes (``Transfer_learning.md``: timm's ``train.py`` with Adam 2e-4,
weight decay 1e-4, cosine schedule with 3 warmup epochs down to 1e-8, EMA 0.995, label smoothing 0.1,
squashed images, 50 epochs at batch 128); SGD and AdamW by option. The pieces are the trainer's:
``read_trained_model`` for the network, ``build_optimizer``/``param_groups`` and ``cosine_schedule`` for the
optimisation, the ``Engine`` for the state, steps and checkpoints, ``SingleLabelLoss``, the loaders and
``DecodedFeed`` for the input.

Data: a prepared dataset (``_info.json`` with ``train`` and ``validation`` splits, read by
``create_loader``; class names from its ``tree.json``) or a class-folder tree ``ROOT/train/<class>/*``
and ``ROOT/val/<class>/*`` (``validation`` also accepted; classes = sorted folder names of ``train``,
e.g. ImageNet-1K's wnid folders). The input normalisation is the 21K model's (its mean/std), so the
network sees what it was pretrained on; ``--loader.transform`` only chooses geometry and augmentation.

``--head-init map``: the new head's row for a class whose name is a wnid of the 21K tree is copied
(weight row and bias) from that class's row of the 21K head; other rows keep the fresh random init.
How many rows were mapped is logged and written to ``RUN_DIR/head_init.json``.

A composition over ``training.engine`` like ``in21k train``: one process or ``torchrun`` (DDP; each rank
reads its part of the data: its shards, or every ``world_size``-th file of the class folders), the same
``Engine.fit`` loop, checkpoints every ``--run.save-every`` steps and at every epoch end, and ``--resume auto``
continues exactly where the newest one stopped. The class-folder loader is ``in21k.loaders.folders``; the
run directory and the model file are ``training.rundir``'s.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from in21k.config import saved_config
from in21k.errors import ConfigError, DataError
from in21k.redact import redact
from in21k.training import distributed as du
from in21k.training.checkpoint import CheckpointManager
from in21k.training.config import FinetuneConfig
from in21k.training.engine import (
    Engine,
    EpochSettings,
    Validation,
    eval_logits,
    resolve_resume,
    run_session,
    steps_per_epoch,
)
from in21k.training.feed import DecodedFeed
from in21k.training.losses import SingleLabelLoss
from in21k.training.optim import build_optimizer, cosine_schedule, param_groups
from in21k.training.pretrained import classifier_layer, read_trained_model
from in21k.training.rundir import CHECKPOINT_SCHEMAS, SINGLE_LABEL, MetricsWriter, RunDir

if TYPE_CHECKING:
    from in21k.tree import SemanticTree

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- head
@dataclass
class HeadInit:
    """Which rows of the new head came from the 21K head: ``mapped[j] = 21K class index`` for new class ``j``."""

    mode: str
    num_classes: int
    mapped: dict[int, int] = field(default_factory=dict)

    def to_dict(self, class_names: list[str], tree: SemanticTree) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "num_classes": self.num_classes,
            "mapped_rows": len(self.mapped),
            "random_rows": self.num_classes - len(self.mapped),
            "mapped": [
                {"row": j, "class": class_names[j], "from_21k_index": i, "name": tree.names[i]}
                for j, i in sorted(self.mapped.items())
            ],
        }


def init_head(model: nn.Module, *, tree: SemanticTree, class_names: list[str], mode: str) -> HeadInit:
    """Replace the 21K head by a ``len(class_names)``-class one; ``mode="map"`` copies overlapping wnids' rows."""
    if mode not in ("random", "map"):
        raise ConfigError(f"head_init must be random or map, got {mode!r}")
    old = classifier_layer(model) if mode == "map" else None
    weight = old.weight.detach().clone() if old is not None else None
    bias = old.bias.detach().clone() if old is not None and old.bias is not None else None
    model.reset_classifier(len(class_names))
    report = HeadInit(mode=mode, num_classes=len(class_names))
    if mode == "map":
        new = classifier_layer(model)
        index = tree.wnid_to_index
        report.mapped = {j: index[name] for j, name in enumerate(class_names) if name in index}
        with torch.no_grad():
            for j, i in report.mapped.items():
                new.weight[j].copy_(weight[i])
                if bias is not None and new.bias is not None:
                    new.bias[j].copy_(bias[i])
        log.info(
            "--head-init map: %d of %d head rows initialised from the 21K head (their class folder names are "
            "wnids of the 21K tree); %d rows random",
            len(report.mapped),
            len(class_names),
            len(class_names) - len(report.mapped),
        )
        if not report.mapped:
            log.warning("--head-init map: no class name is a wnid of the 21K tree; the whole head is random")
    return report


# ----------------------------------------------------------------------------------------- data
@dataclass
class FinetuneData:
    train: Any
    val: Any
    class_names: list[str]


def open_data(cfg: FinetuneConfig, *, image_size: int, rank: int = 0, world_size: int = 1) -> FinetuneData:
    """The train and validation loaders and the class names of ``--data`` (prepared shards or class folders)."""
    from in21k.dataset import PreparedDataset, is_prepared

    options = cfg.loader
    if is_prepared(cfg.data, storage_options=options.storage_options):
        from in21k.loaders import create_loader
        from in21k.tree import SemanticTree

        dataset = PreparedDataset.open(cfg.data, storage_options=options.storage_options)

        def loader(split: str, train: bool):
            return create_loader(
                data=dataset,
                split=split,
                batch_size=cfg.batch_size,
                options=options,
                seed=cfg.seed,
                train=train,
                image_size=image_size,
                rank=rank,
                world_size=world_size,
            )

        try:  # class names (wnids) from the prepared dataset's tree, wherever the dataset lies
            names = SemanticTree.from_dict(dataset.tree_data()).wnids
        except DataError as exc:
            log.warning("%s: classes are named by index; --head-init map maps none", exc)
            names = [str(i) for i in range(dataset.num_classes)]
        if len(names) != dataset.num_classes:
            raise DataError(f"{cfg.data}: tree.json has {len(names)} classes but _info.json {dataset.num_classes}")
        return FinetuneData(train=loader("train", True), val=loader("validation", False), class_names=names)
    from in21k.loaders.folders import FolderLoader, scan_class_folders, val_split_of
    from in21k.loaders.transforms import build_transform

    root = Path(cfg.data)
    if not root.is_dir():
        raise DataError(
            f"--data {cfg.data!r}: neither a prepared dataset (no _info.json) nor a folder of class folders"
        )
    classes, train_files = scan_class_folders(root, "train")
    val_split = val_split_of(root)
    _, val_files = scan_class_folders(root, val_split, classes)
    log.info(
        "class folders %s: %d classes, %d train and %d %s images",
        root,
        len(classes),
        len(train_files),
        len(val_files),
        val_split,
    )

    def folder(files, train: bool) -> FolderLoader:
        tf = build_transform(options.transform, image_size=image_size, train=train, timm_args=options.timm_args)
        return FolderLoader(
            files,
            transform=tf,
            batch_size=cfg.batch_size,
            num_workers=options.num_workers,
            seed=cfg.seed,
            train=train,
            rank=rank,
            world_size=world_size,
        )

    return FinetuneData(train=folder(train_files, True), val=folder(val_files, False), class_names=classes)


# ----------------------------------------------------------------------------------------- the run
def build_optimizer_for(model: nn.Module, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return build_optimizer(model, name=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay)


@torch.no_grad()
def evaluate(model: nn.Module, loader, feed, autocast, *, max_batches: int | None) -> dict[str, Any]:
    correct1 = correct5 = seen = 0
    loss_sum = 0.0
    for logits, y in eval_logits(model, loader, feed, autocast, max_batches=max_batches):
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += int((top[:, 0] == y).sum())
        correct5 += int((top == y.unsqueeze(1)).any(dim=1).sum())
        seen += len(y)
    counts = torch.tensor([correct1, correct5, loss_sum, seen], dtype=torch.float64, device=feed.device)
    if du.is_enabled():  # each rank saw its own files: sum the counts
        torch.distributed.all_reduce(counts)
    correct1, correct5, loss_sum, seen = counts.tolist()
    n = max(seen, 1.0)
    return {"top1": correct1 / n, "top5": correct5 / n, "loss": loss_sum / n, "samples": int(seen)}


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Run ``in21k finetune`` in this process (alone, or as one rank of a torchrun job)."""
    rundir = RunDir(cfg.out)
    with run_session(rundir, cfg) as (info, device):
        return _finetune(cfg, rundir, info, device)


def _finetune(cfg: FinetuneConfig, rundir: RunDir, info: du.DistInfo, device: torch.device) -> dict[str, Any]:
    trained = read_trained_model(
        cfg.checkpoint, model_name=cfg.model, tree=cfg.tree, image_size=cfg.image_size, weights=cfg.weights
    )
    data = open_data(cfg, image_size=trained.image_size, rank=info.rank, world_size=info.world_size)
    model = trained.model
    torch.manual_seed(cfg.seed)  # the new head's random rows: the same on every rank
    head = init_head(model, tree=trained.tree, class_names=data.class_names, mode=cfg.head_init)
    if info.rank == 0:
        rundir.head_init.write_text(json.dumps(head.to_dict(data.class_names, trained.tree), indent=1))
    model.train().to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    feed = DecodedFeed(device=device, mean=trained.mean, std=trained.std, channels_last=cfg.channels_last)
    loss_fn = SingleLabelLoss(label_smoothing=cfg.label_smoothing)
    steps = steps_per_epoch(data.train, batch_size=cfg.batch_size, max_steps=cfg.run.max_steps_per_epoch)
    schedule = cosine_schedule(
        steps * cfg.epochs, lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=int(round(cfg.warmup_epochs * steps))
    )
    checkpoints = CheckpointManager(rundir, keep_last=cfg.run.keep_last)
    engine = Engine(
        model,
        build_optimizer_for(model, cfg),
        schedule,
        train_loader=data.train,
        device=device,
        info=info,
        checkpoints=checkpoints,
        metrics=MetricsWriter.for_run(rundir, enabled=info.rank == 0),
        schema=CHECKPOINT_SCHEMAS["finetune"],
        checkpoint_extra={"config": saved_config(cfg), "model_name": trained.model_name, "classes": data.class_names},
        batch_size=cfg.batch_size,
        amp=cfg.amp,
        ema_decay=cfg.ema_decay if cfg.ema else None,
        grad_clip=cfg.grad_clip,
        seed=cfg.seed,
    )
    engine.start(resolve_resume(checkpoints, cfg.resume))
    log.info(
        "fine-tuning %s on %s: %d classes, %d steps/epoch x %d epochs (%s, lr %g), world size %d",
        trained.model_name,
        device,
        len(data.class_names),
        steps,
        cfg.epochs,
        cfg.optimizer,
        cfg.lr,
        info.world_size,
    )

    def compute_loss(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": loss_fn(engine.forward(x), y)}

    def validate(m: nn.Module) -> dict[str, Any]:
        return evaluate(m, data.val, feed, engine.autocast, max_batches=cfg.run.val_max_batches)

    last = engine.fit(
        cfg.epochs,
        feed=feed,
        compute_loss=compute_loss,
        settings=EpochSettings.from_run(cfg.run),
        validation=Validation(validate, headline=(("top1", "top-1"), ("top5", "top-5"))),
    )
    engine.save_model(
        rundir.model,
        SINGLE_LABEL,
        model_name=trained.model_name,
        image_size=trained.image_size,
        mean=trained.mean,
        std=trained.std,
        config=saved_config(cfg),
        classes=data.class_names,
        source_checkpoint=redact(cfg.checkpoint),
    )
    digest = engine.finish()
    return {
        "run_dir": str(rundir.root),
        "epochs": cfg.epochs,
        "steps": engine.pos.step,
        "classes": len(data.class_names),
        "head_mapped_rows": len(head.mapped),
        "world_size": info.world_size,
        "param_digest": digest,
        "val": last,
    }
