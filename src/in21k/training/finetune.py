"""``in21k finetune``: transfer a 21K model to a single-label dataset (prepared shards or class folders).

The recipe is the original's transfer notes (``Transfer_learning.md``: timm's ``train.py`` with Adam 2e-4,
weight decay 1e-4, cosine schedule with 3 warmup epochs down to 1e-8, EMA 0.995, label smoothing 0.1,
squashed images, 50 epochs at batch 128); SGD and AdamW by option. The pieces are the trainer's:
``build_model``/``read_trained_model`` for the network, ``build_optimizer``/``param_groups`` and
``cosine_schedule`` for the optimisation, ``ModelEma``, ``CheckpointManager`` and ``atomic_save``,
``SingleLabelLoss``, the loader's transforms and ``DecodedFeed`` for the input.

Data: a prepared dataset (``_info.json`` with ``train`` and ``validation`` splits, read by
``create_loader``; class names from its ``tree.json``) or a class-folder tree ``ROOT/train/<class>/*``
and ``ROOT/val/<class>/*`` (``validation`` also accepted; classes = sorted folder names of ``train``,
e.g. ImageNet-1K's wnid folders). The input normalisation is the 21K model's (its mean/std), so the
network sees what it was pretrained on; ``--transform`` only chooses geometry and augmentation.

``--head-init map``: the new head's row for a class whose name is a wnid of the 21K tree is copied
(weight row and bias) from that class's row of the 21K head; other rows keep the fresh random init.
How many rows were mapped is logged and written to ``RUN_DIR/head_init.json``.

Runs in one process or under ``torchrun`` (DDP; each rank reads its part of the data: its shards, or
every ``world_size``-th file of the class folders). Checkpoints are written at every epoch end and
``--resume auto`` continues from the newest at that epoch boundary.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from in21k.config import config_to_dict, save_config
from in21k.training import distributed as du
from in21k.training.checkpoint import CheckpointManager, atomic_save, load_checkpoint, rng_state, set_rng_state
from in21k.training.config import FinetuneConfig
from in21k.training.feed import DecodedFeed
from in21k.training.losses import SingleLabelLoss
from in21k.training.optim import (
    ModelEma,
    autocast_dtype,
    build_optimizer,
    cosine_schedule,
    param_groups,
    set_lr,
)
from in21k.training.pretrained import classifier_layer, read_trained_model
from in21k.training.train import MetricsWriter, eval_logits, setup_logging

if TYPE_CHECKING:
    from in21k.tree import SemanticTree

log = logging.getLogger(__name__)

SCHEMA = "in21k.finetune-checkpoint/1"
VAL_SPLITS = ("val", "validation")


# ----------------------------------------------------------------------------------------- head
@dataclass
class HeadInit:
    """Which rows of the new head came from the 21K head: ``mapped[j] = 21K class index`` for new class ``j``."""

    mode: str
    num_classes: int
    mapped: dict[int, int] = field(default_factory=dict)

    def to_dict(self, class_names: list[str], tree: SemanticTree) -> dict[str, Any]:
        return {
            "mode": self.mode, "num_classes": self.num_classes, "mapped_rows": len(self.mapped),
            "random_rows": self.num_classes - len(self.mapped),
            "mapped": [{"row": j, "class": class_names[j], "from_21k_index": i, "name": tree.names[i]}
                       for j, i in sorted(self.mapped.items())],
        }  # fmt: skip


def init_head(model: nn.Module, *, tree: SemanticTree, class_names: list[str], mode: str) -> HeadInit:
    """Replace the 21K head by a ``len(class_names)``-class one; ``mode="map"`` copies overlapping wnids' rows."""
    if mode not in ("random", "map"):
        raise ValueError(f"head_init must be random or map, got {mode!r}")
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
        log.info("--head-init map: %d of %d head rows initialised from the 21K head (their class folder names are "
                 "wnids of the 21K tree); %d rows random", len(report.mapped), len(class_names),
                 len(class_names) - len(report.mapped))  # fmt: skip
        if not report.mapped:
            log.warning("--head-init map: no class name is a wnid of the 21K tree; the whole head is random")
    return report


# ----------------------------------------------------------------------------------------- data
def _is_prepared(data: str) -> bool:
    return "://" in data or (Path(data) / "_info.json").is_file()


def scan_class_folders(
    root: Path, split: str, classes: list[str] | None = None
) -> tuple[list[str], list[tuple[str, int]]]:
    """``(classes, [(file, label)])`` of ``root/split/<class>/*`` (classes: sorted folder names unless given)."""
    from in21k.predict.inputs import IMAGE_SUFFIXES

    base = root / split
    if not base.is_dir():
        raise ValueError(f"{base} is not a folder: class folders must be ROOT/train/<class>/ and ROOT/val/<class>/")
    found = sorted(p.name for p in base.iterdir() if p.is_dir())
    if classes is None:
        classes = found
    elif unknown := sorted(set(found) - set(classes)):
        raise ValueError(f"{base} has class folders that train/ lacks: {', '.join(unknown[:10])}")
    if not classes:
        raise ValueError(f"{base} holds no class folder")
    label = {c: i for i, c in enumerate(classes)}
    files = [(str(f), label[c]) for c in found for f in sorted((base / c).rglob("*"))
             if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]  # fmt: skip
    if not files:
        raise ValueError(f"{base} holds no image files")
    return classes, files


class _FolderDataset(torch.utils.data.Dataset):
    def __init__(self, files: list[tuple[str, int]], transform) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from in21k.loaders.transforms import CorruptImageError

        path, label = self.files[i]
        try:
            return self.transform(Path(path).read_bytes()), label
        except CorruptImageError as exc:
            log.debug("skipping %s: %s", path, exc)
            return None  # counted by the collate function


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor, int]:
    good = [it for it in items if it is not None]
    if not good:
        return torch.empty(0, 3, 1, 1, dtype=torch.uint8), torch.empty(0, dtype=torch.long), len(items)
    images = torch.from_numpy(np.stack([arr for arr, _ in good])).permute(0, 3, 1, 2)
    return images, torch.tensor([lab for _, lab in good], dtype=torch.long), len(items) - len(good)


class FolderLoader:
    """Batches ``(uint8 [B,3,H,W], labels)`` of this rank's part of a class-folder split.

    Training: one permutation per ``set_epoch`` (the same on every rank), dealt round-robin to the ranks
    and cut so that every rank gets the same number of full batches. Evaluation: every ``world_size``-th
    file from ``rank`` on, nothing dropped or repeated (the counts are summed over ranks).
    """

    def __init__(self, files, *, transform, batch_size: int, num_workers: int, seed: int, train: bool,
                 rank: int = 0, world_size: int = 1) -> None:  # fmt: skip
        self.dataset = _FolderDataset(files, transform)
        self.batch_size, self.num_workers, self.seed, self.train = batch_size, num_workers, seed, train
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.corrupt = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.dataset)
        if self.train:
            return (n // self.world_size) // self.batch_size
        return math.ceil(len(range(self.rank, n, self.world_size)) / self.batch_size)

    def indices(self) -> list[int]:
        n = len(self.dataset)
        if not self.train:
            return list(range(self.rank, n, self.world_size))
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch))
        return order[self.rank :: self.world_size][: len(self) * self.batch_size].tolist()

    def __iter__(self):
        # Worker seeds (augmentation) derive from this generator: per (seed, epoch, rank).
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 1009 + self.rank)
        dl = torch.utils.data.DataLoader(
            self.dataset, batch_size=self.batch_size, sampler=self.indices(), drop_last=self.train, generator=g,
            num_workers=self.num_workers, collate_fn=_collate,
        )  # fmt: skip
        for images, labels, bad in dl:
            self.corrupt += bad
            if len(labels):
                yield images, labels


@dataclass
class FinetuneData:
    train: Any
    val: Any
    class_names: list[str]


def open_data(cfg: FinetuneConfig, *, image_size: int, rank: int = 0, world_size: int = 1) -> FinetuneData:
    """The train and validation loaders and the class names of ``--data`` (prepared shards or class folders)."""
    from in21k.loaders.transforms import build_transform

    if _is_prepared(cfg.data):
        from in21k.loaders import create_loader

        def loader(split: str, train: bool):
            return create_loader(
                data=cfg.data, split=split, batch_size=cfg.batch_size, num_workers=cfg.num_workers, seed=cfg.seed,
                train=train, transform=cfg.transform, image_size=image_size, rank=rank, world_size=world_size,
            )  # fmt: skip

        train = loader("train", True)
        from in21k.loaders.sources import join_url, read_json
        from in21k.tree import SemanticTree

        try:  # class names (wnids) from the prepared dataset's tree.json, local or in object storage
            names = SemanticTree.from_dict(read_json(join_url(cfg.data, "tree.json"))).wnids
        except (OSError, ValueError) as exc:
            log.warning("no readable tree.json in %s (%s): classes are named by index; --head-init map maps none",
                        cfg.data, exc)  # fmt: skip
            names = [str(i) for i in range(train.num_classes)]
        if len(names) != train.num_classes:
            raise ValueError(f"{cfg.data}: tree.json has {len(names)} classes but _info.json {train.num_classes}")
        return FinetuneData(train=train, val=loader("validation", False), class_names=names)
    root = Path(cfg.data)
    classes, train_files = scan_class_folders(root, "train")
    val_split = next((s for s in VAL_SPLITS if (root / s).is_dir()), None)
    if val_split is None:
        raise ValueError(f"{root} has no val/ (or validation/) folder next to train/")
    _, val_files = scan_class_folders(root, val_split, classes)
    log.info("class folders %s: %d classes, %d train and %d %s images", root, len(classes), len(train_files),
             len(val_files), val_split)  # fmt: skip

    def folder(files, train: bool) -> FolderLoader:
        tf = build_transform(cfg.transform, image_size=image_size, train=train)
        return FolderLoader(files, transform=tf, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                            seed=cfg.seed, train=train, rank=rank, world_size=world_size)  # fmt: skip

    return FinetuneData(train=folder(train_files, True), val=folder(val_files, False), class_names=classes)


# ----------------------------------------------------------------------------------------- loop
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


def _sync_buffers(*modules: nn.Module | None) -> None:
    """Rank 0's buffers (BatchNorm statistics) to every rank.

    DDP broadcasts them at the start of each training forward, so after the last step of an epoch every
    rank holds statistics updated by its own batch (and an EMA built from them): without this, the ranks
    would validate and end with different weights.
    """
    if not du.is_enabled():
        return
    for module in modules:
        if module is not None:
            for buf in module.buffers():
                torch.distributed.broadcast(buf, src=0)


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Run ``in21k finetune`` in this process (alone, or as one rank of a torchrun job)."""
    info = du.init_distributed()
    run_dir = Path(cfg.out)
    handler = setup_logging(run_dir, info.rank)
    try:
        return _finetune(cfg, run_dir, info)
    finally:
        du.destroy()
        logging.getLogger().removeHandler(handler)
        handler.close()


def _finetune(cfg: FinetuneConfig, run_dir: Path, info: du.DistInfo) -> dict[str, Any]:
    main = info.rank == 0
    if main:
        save_config(cfg, run_dir / "config.yaml")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but CUDA is not available; use --device cpu")
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", info.local_rank) if cuda else torch.device("cpu")
    trained = read_trained_model(cfg.checkpoint, model_name=cfg.model, tree=cfg.tree, image_size=cfg.image_size,
                                 weights=cfg.weights)  # fmt: skip
    data = open_data(cfg, image_size=trained.image_size, rank=info.rank, world_size=info.world_size)
    model = trained.model
    torch.manual_seed(cfg.seed)  # the new head's random rows: the same on every rank
    head = init_head(model, tree=trained.tree, class_names=data.class_names, mode=cfg.head_init)
    if main:
        (run_dir / "head_init.json").write_text(json.dumps(head.to_dict(data.class_names, trained.tree), indent=1))
    model.train().to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    feed = DecodedFeed(device=device, mean=trained.mean, std=trained.std, channels_last=cfg.channels_last)
    loss_fn = SingleLabelLoss(label_smoothing=cfg.label_smoothing)
    optimizer = build_optimizer_for(model, cfg)
    steps_per_epoch = len(data.train)
    if cfg.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    if steps_per_epoch < 1:
        raise ValueError(f"the training split gives no full batch of {cfg.batch_size}; lower --batch-size")
    schedule = cosine_schedule(steps_per_epoch * cfg.epochs, lr=cfg.lr, min_lr=cfg.min_lr,
                               warmup_steps=int(round(cfg.warmup_epochs * steps_per_epoch)))  # fmt: skip
    amp_dtype = autocast_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    ema = ModelEma(model, decay=cfg.ema_decay) if cfg.ema else None
    ckpts = CheckpointManager(run_dir, keep_last=cfg.keep_last)
    metrics = MetricsWriter(run_dir / "metrics.jsonl", main)
    epoch = step = 0
    resume = ckpts.resolve(cfg.resume)
    if du.is_enabled():  # rank 0 decides, so every rank resumes from the same file
        box = [str(resume) if resume else None]
        torch.distributed.broadcast_object_list(box, src=0)
        resume = Path(box[0]) if box[0] else None
    if resume is not None:
        state = load_checkpoint(resume)
        if state.get("schema") != SCHEMA:
            raise ValueError(f"{resume} is not an in21k finetune checkpoint")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        rngs = state["rng"]
        if len(rngs) == info.world_size:
            set_rng_state(rngs[info.rank])
        else:
            log.warning("checkpoint from %d ranks, now %d: RNG states not restored", len(rngs), info.world_size)
        epoch, step = int(state["position"]["epoch"]), int(state["position"]["step"])
        log.info("resumed from %s at epoch %d (step %d)", resume, epoch, step)
    else:  # per-rank streams for what draws from the global generators (augmentation without workers)
        torch.manual_seed(cfg.seed * 1000 + info.rank + 1)
        random.seed(cfg.seed * 1000 + info.rank + 1)
        np.random.seed(cfg.seed * 1000 + info.rank + 1)
    wrapped: nn.Module = model
    if info.enabled:
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=amp_dtype)

    log.info("fine-tuning %s on %s: %d classes, %d steps/epoch x %d epochs (%s, lr %g), world size %d",
             trained.model_name, device, len(data.class_names), steps_per_epoch, cfg.epochs, cfg.optimizer, cfg.lr,
             info.world_size)  # fmt: skip
    last: dict[str, Any] = {}
    from tqdm import tqdm

    while epoch < cfg.epochs:
        data.train.set_epoch(epoch)
        # The loss stays on the device until a metrics line (no host sync per step).
        window, window_n, start = torch.zeros((), device=device, dtype=torch.float64), 0, time.perf_counter()
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}", unit="batch", dynamic_ncols=True, disable=not main)
        for i, (images, labels) in enumerate(data.train):
            if i >= steps_per_epoch:
                break
            x, y = feed(images, labels)
            with autocast():
                logits = wrapped(x)
            loss = loss_fn(logits, y)
            lr = float(schedule[step])
            set_lr(optimizer, lr)
            scaler.scale(loss).backward()
            if cfg.grad_clip is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(model)
            step += 1
            window += loss.detach().double()
            window_n += 1
            bar.update(1)
            if step % cfg.log_every == 0 or i + 1 == steps_per_epoch:
                elapsed = max(time.perf_counter() - start, 1e-9)
                mean_loss = float(du.all_reduce_mean(window)) / window_n
                if not math.isfinite(mean_loss):
                    raise RuntimeError(f"loss is {mean_loss} at step {step}: lower --lr or use --amp bf16/none")
                record = {"kind": "train", "epoch": epoch, "step": step, "loss": mean_loss, "lr": lr,
                          "img_per_s": round(window_n * cfg.batch_size * info.world_size / elapsed, 1)}  # fmt: skip
                metrics.write(record)
                bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.2e}")
                window.zero_()
                window_n, start = 0, time.perf_counter()
        bar.close()
        _sync_buffers(model, ema.module if ema is not None else None)
        last = evaluate(model, data.val, feed, autocast, max_batches=cfg.val_max_batches)
        record = {"kind": "val", "epoch": epoch, "step": step, **last}
        if ema is not None:
            record["ema"] = evaluate(ema.module, data.val, feed, autocast, max_batches=cfg.val_max_batches)
        metrics.write(record)
        log.info("epoch %d: val top-1 %.4f, top-5 %.4f%s", epoch, last["top1"], last["top5"],
                 f", EMA top-1 {record['ema']['top1']:.4f}" if ema is not None else "")  # fmt: skip
        epoch += 1
        rngs = [None] * info.world_size  # every rank's RNG state, gathered to the file (as in training)
        if du.is_enabled():
            torch.distributed.all_gather_object(rngs, rng_state())
        else:
            rngs = [rng_state()]
        if main:
            state = {
                "schema": SCHEMA, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                "position": {"epoch": epoch, "step": step}, "rng": rngs, "config": config_to_dict(cfg),
                "model_name": trained.model_name, "classes": data.class_names, "world_size": info.world_size,
            }  # fmt: skip
            log.info("saved %s", ckpts.save(state, step))
        du.barrier()
    corrupt = getattr(data.train, "corrupt", 0)
    if corrupt:
        log.warning("%d training images could not be decoded and were skipped", corrupt)
    final = {
        "task": "single-label", "model": model.state_dict(), "ema": ema.state_dict() if ema is not None else None,
        "model_name": trained.model_name, "image_size": trained.image_size, "mean": list(trained.mean),
        "std": list(trained.std), "classes": data.class_names, "source_checkpoint": cfg.checkpoint,
        "config": config_to_dict(cfg),
    }  # fmt: skip
    if main:
        atomic_save(final, run_dir / "model.pt")
    digest = du.check_replicas_agree(model)
    return {"run_dir": str(run_dir), "epochs": cfg.epochs, "steps": step, "classes": len(data.class_names),
            "head_mapped_rows": len(head.mapped), "world_size": info.world_size, "param_digest": digest,
            "val": last}  # fmt: skip
