"""``in21k predict``: per-level predictions with WordNet names for images, folders and URLs."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from typing import Literal

from in21k.config import add_config_args, config_from_args, print_config_requested
from in21k.errors import ConfigError

EPILOG = """\
examples:
  in21k predict --checkpoint runs/r50/model.pt photo.jpg photos/
  in21k predict --checkpoint runs/r50/checkpoints/ckpt-000050000.pt --tree DST/tree.json --json photo.jpg
  in21k predict --checkpoint resnet50_miil_21k.pth --model resnet50 --tree fall11 --plot out.png https://host/dog.jpg
"""


def _h(text: str, metavar: str | None = None) -> dict:
    return {"help": text, **({"metavar": metavar} if metavar else {})}


@dataclass
class PredictConfig:
    checkpoint: str = field(
        default="", metadata=_h("our model.pt or checkpoint, or the original's published state dict", "CKPT")
    )
    tree: str | None = field(
        default=None,
        metadata=_h(
            "semantic tree (default: the checkpoint's); required for a plain state dict", "PATH|fall11|winter21"
        ),
    )
    model: str | None = field(
        default=None,
        metadata=_h("timm architecture (default: the checkpoint's); required for a plain state dict", "NAME"),
    )
    image_size: int | None = field(default=None, metadata=_h("input size (default: the checkpoint's, else 224)", "PX"))
    weights: Literal["model", "ema"] = field(default="model", metadata=_h("which weights of our files"))
    threshold: float = field(default=0.5, metadata=_h("keep levels whose probability is above this", "P"))
    top_k: int = field(default=3, metadata=_h("top classes listed per level (--json)", "K"))
    json: bool = field(default=False, metadata=_h("one JSON object per image instead of text"))
    plot: str | None = field(default=None, metadata=_h("also draw each image with its predicted path", "OUT.png"))
    batch_size: int = field(default=32, metadata=_h("images per forward pass", "B"))
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata=_h("auto = cuda when available"))
    timeout: float = field(default=30.0, metadata=_h("seconds to wait for a URL", "S"))

    def validate(self) -> None:
        if not self.checkpoint:
            raise ConfigError("--checkpoint is required")
        if not 0.0 <= self.threshold < 1.0:
            raise ConfigError(f"--threshold must be in [0, 1), got {self.threshold}")
        if self.top_k < 1 or self.batch_size < 1:
            raise ConfigError("--top-k and --batch-size must be >= 1")


def _predict(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, PredictConfig)
    if print_config_requested(args, cfg):
        return 0
    import torch

    from in21k.predict.inputs import read_inputs
    from in21k.predict.predictor import Predictor
    from in21k.training.pretrained import read_trained_model

    device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    trained = read_trained_model(
        cfg.checkpoint, model_name=cfg.model, tree=cfg.tree, image_size=cfg.image_size, weights=cfg.weights
    )
    predictor = Predictor(trained, device=device, threshold=cfg.threshold, top_k=cfg.top_k, batch_size=cfg.batch_size)
    images = list(read_inputs(args.inputs, timeout=cfg.timeout))
    predictions = predictor.predict(images)
    for pred in predictions:
        if cfg.json:
            print(json.dumps(pred.to_dict()))
            continue
        print(pred.input)
        if pred.error is not None:
            print(f"  error: {pred.error}")
        elif not pred.path:
            best = pred.levels[0][0]
            print(f"  no level above {cfg.threshold:g} (level 0 best: {best.name} [{best.wnid}] {best.prob:.3f})")
        for p in pred.path:
            print(f"  level {p.level:2d}  {p.wnid}  {p.prob:.3f}  {p.name}")
    if cfg.plot:
        from in21k.predict.plot import plot_predictions

        plot_predictions(images, predictions, cfg.plot, threshold=cfg.threshold)
    return 1 if any(p.error is not None for p in predictions) else 0


def register(commands) -> None:
    parser = commands.add(
        "predict",
        help="per-level predictions with WordNet names (images, folders, URLs)",
        description="Classify images with a trained 21K model: for each image, its path down the semantic tree "
        "(per level, the most probable child of the class above, kept while its probability is above "
        "--threshold), with WordNet names and probabilities. Reads our model.pt and checkpoints, and the "
        "original's published state dicts (then --model and --tree are required). Exit status 1 when an input "
        "could not be read or decoded.",
    )
    parser.epilog = EPILOG
    parser.add_argument("inputs", nargs="*", metavar="IMAGE|FOLDER|URL", help="image files, folders, http(s):// URLs")
    add_config_args(parser, PredictConfig)
    parser.set_defaults(func=_predict)
