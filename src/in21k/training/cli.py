"""``in21k train``, ``in21k finetune`` (torchrun for several processes) and ``in21k export`` on the command line."""

from __future__ import annotations

import argparse
import json
import os

from in21k.config import add_config_args, config_from_args, print_config_requested
from in21k.training.rundir import CHECKPOINTS, CONFIG, CURVES, EVENTS, HEAD_INIT, LOGS, METRICS, MODEL

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
    if command == "train":  # a wrong address or a missing dataset fails now, in a second, before torch is imported
        from in21k.dataset import PreparedDataset

        PreparedDataset.open(cfg.data, storage_options=cfg.loader.storage_options)
    elif command == "finetune":  # (its data may also be class folders)
        from in21k import storage

        storage.check_access(cfg.data, cfg.loader.storage_options, what="folder")
    if command == "train":
        from in21k.training.train import train as run
    elif command == "finetune":
        from in21k.training.finetune import finetune as run
    else:
        from in21k.training.export import export as run
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
        f"weights only, AMP). Writes RUN_DIR/{CONFIG}, {METRICS}, {EVENTS}/ (TensorBoard), {LOGS}/, {CHECKPOINTS}/, "
        f"{CURVES}, {MODEL}.",
    )
    parser.epilog = EPILOG
    add_config_args(parser, TrainConfig)
    parser.set_defaults(func=_train)
    register_finetune(commands)
    register_export(commands)


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
        f"from the 21K head. Writes RUN_DIR/{CONFIG}, {HEAD_INIT}, {METRICS}, {EVENTS}/, {LOGS}/, {CHECKPOINTS}/ "
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


def _export(args: argparse.Namespace) -> int:
    from in21k.training.config import ExportConfig

    return _run(args, ExportConfig, "export")


def register_export(commands) -> None:
    from in21k.training.config import ExportConfig
    from in21k.training.hub import CARD, CONFIG, TREE, WEIGHTS

    parser = commands.add(
        "export",
        help="write a 21K model as a folder timm loads (timm.create_model('local-dir:DIR', pretrained=True))",
        description="Export a trained 21K model (our model.pt or checkpoint, or the original's state dict with --model "
        f"and --tree) in timm's hub layout: DIR/{WEIGHTS}, {CONFIG} (architecture, preprocessing, label_names = "
        f"WordNet lemma names, label_descriptions = WordNet glosses), {TREE} (the semantic tree), {CARD} (a model "
        "card: data, recipe, per-level metrics, how to load). timm loads the folder without in21k; in21k predict, "
        "finetune, train --init and --teacher take it too. --tree-head keeps the head's tree levels, so that in21k "
        "predict DIR answers per level.",
    )
    parser.epilog = """\
examples:
  in21k export --checkpoint runs/r50/model.pt --out exports/r50 --tree-head
  in21k export --checkpoint resnet50_miil_21k.pth --model resnet50 --tree fall11 --out exports/miil
"""
    add_config_args(parser, ExportConfig)
    parser.set_defaults(func=_export)
