"""``in21k train`` and ``in21k finetune`` on the command line (torchrun for several processes)."""

from __future__ import annotations

import argparse
import json
import os

from in21k.config import add_config_args, config_from_args, print_config_requested
from in21k.training.rundir import CHECKPOINTS, CONFIG, CURVES, HEAD_INIT, LOGS, METRICS, MODEL

EPILOG = """\
examples:
  in21k train --data DST --model resnet50 --out runs/r50 --config configs/train/default.yaml
  in21k train --data DST --model resnet10t --out runs/demo --config configs/train/demo.yaml
  torchrun --nproc-per-node 8 -m in21k train --data s3://bucket/DST --model vit_base_patch16_224 \\
      --out runs/vit --config configs/train/adamw_cosine_ema.yaml --resume auto
"""


def _run(args: argparse.Namespace, config: type, command: str) -> int:
    """Resolve the command's config (``--print-config`` stops there), run it, print its result line (rank 0)."""
    cfg = config_from_args(args, config)
    if print_config_requested(args, cfg):
        return 0
    if command == "train":
        from in21k.training.train import train as run
    else:
        from in21k.training.finetune import finetune as run
    result = run(cfg)
    if os.environ.get("RANK", "0") == "0":  # the process group is gone by now; torchrun's variable remains
        print(json.dumps(result))
    return 0


def _train(args: argparse.Namespace) -> int:
    from in21k.training.config import TrainConfig

    return _run(args, TrainConfig, "train")


def register(commands) -> None:
    from in21k.training.config import TrainConfig

    parser = commands.add(
        "train",
        help="train a timm model with the semantic softmax (torchrun for several processes/nodes)",
        description="Train any timm model on a prepared dataset with the semantic softmax loss (or plain "
        "cross-entropy). Defaults are the original recipe (Adam 3e-4, OneCycle per step, wd 1e-4 on "
        f"weights only, AMP). Writes RUN_DIR/{CONFIG}, {METRICS}, {LOGS}/, {CHECKPOINTS}/, {CURVES}, {MODEL}.",
    )
    parser.epilog = EPILOG
    add_config_args(parser, TrainConfig)
    parser.set_defaults(func=_train)
    register_finetune(commands)


def _finetune(args: argparse.Namespace) -> int:
    from in21k.training.config import FinetuneConfig

    return _run(args, FinetuneConfig, "finetune")


def register_finetune(commands) -> None:
    from in21k.training.config import FinetuneConfig

    parser = commands.add(
        "finetune",
        help="transfer a 21K model to a single-label dataset (prepared shards or class folders)",
        description="Fine-tune a 21K model (our model.pt/checkpoint, or the original's state dict with --model and "
        "--tree) on a single-label dataset: prepared shards (DST/_info.json) or class folders ROOT/train/<class>/, "
        "ROOT/val/<class>/; one process or torchrun (DDP). Recipe of the original's transfer notes by default "
        "(Adam 2e-4, wd 1e-4, cosine with warmup, EMA, label smoothing 0.1); --optimizer sgd|adamw. "
        "--head-init map initialises the new head's rows of classes whose folder name is a wnid of the 21K tree "
        f"from the 21K head. Writes RUN_DIR/{CONFIG}, {HEAD_INIT}, {METRICS}, {LOGS}/, {CHECKPOINTS}/ "
        f"(one per epoch; --resume auto), {MODEL}.",
    )
    parser.epilog = """\
examples:
  in21k finetune --checkpoint runs/r50/model.pt --data /data/imagenet --out runs/r50-in1k --head-init map \\
      --config configs/finetune/default.yaml
  in21k finetune --checkpoint resnet50_miil_21k.pth --model resnet50 --tree fall11 --data DST --out runs/ft \\
      --config configs/finetune/sgd.yaml
"""
    add_config_args(parser, FinetuneConfig)
    parser.set_defaults(func=_finetune)
