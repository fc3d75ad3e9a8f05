"""Trained 21K models from a file: our model files and checkpoints, and the original's published format.

One reader for everything that consumes a trained semantic-softmax model (the KD teacher, ``in21k predict``,
``in21k finetune``). Every file is read with ``torch.load(weights_only=True)``, and what it is comes from its
schema (``training.rundir.identify``, which also knows the formats):

- **Our model file** (``RUN_DIR/model.pt``, schema ``in21k.model/1``, task ``semantic-softmax``):
  architecture, tree and preprocessing all come from the file. Model files written before the schema field
  are read the same way.
- **Our checkpoint** of ``in21k train`` (``RUN_DIR/checkpoints/ckpt-<step>.pt``): the architecture and config
  come from the file; the tree from the run's ``--tree`` or its prepared dataset (``config["data"]``, any
  storage URL) when it can still be read, else it must be given.
- **Foreign files**, e.g. the original's published weights (``resnet50_miil_21k.pth``) or a timm state dict:
  a plain state dict, possibly under ``state_dict`` (or ``model``); the architecture name and the tree must
  be given (``fall11`` is built in). Preprocessing is the original's: squash, no mean/std normalisation.
- **An exported folder** (``in21k export``, timm's hub layout, ``training.hub``): architecture, preprocessing
  and tree from its ``config.json`` and tree file; its head is read per tree level when it was exported with
  ``--tree-head``, else as one softmax over all classes. Any timm hub folder (``config.json`` and
  ``model.safetensors``) is read too, with the tree given.

A single-label model or checkpoint of ``in21k finetune`` is refused (it has no semantic 21K head), and so is
a file of an in21k schema this version does not know.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from in21k import storage
from in21k.errors import ConfigError, DataError, StorageError
from in21k.redact import strip_redacted
from in21k.training import hub
from in21k.training.rundir import SINGLE_LABEL, identify

if TYPE_CHECKING:
    from in21k.tree import SemanticTree

log = logging.getLogger(__name__)


@dataclass
class TrainedModel:
    """A loaded model (eval mode, on the CPU) and what is needed to feed it and read its output."""

    model: nn.Module
    model_name: str
    tree: SemanticTree
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    transform: str  # the loader transform whose eval variant matches the model's validation preprocessing
    kind: str  # "model" (our model file), "checkpoint" (ours), "export" (a timm hub folder) or "foreign" (a plain
    # state dict: the original's format)
    weights: str  # "model" or "ema"
    config: dict[str, Any] = field(default_factory=dict)  # the run's saved config (redacted); {} for foreign files


def _tensors(obj: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in obj.items()}
    return None


def _load_tree(tree: SemanticTree | str | None) -> SemanticTree | None:
    if tree is None or not isinstance(tree, str):
        return tree
    from in21k.tree import SemanticTree

    return SemanticTree.load(tree)


def _checkpoint_tree(obj: dict[str, Any], path: Path) -> SemanticTree:
    """The tree of one of our files: carried in it (model files), or the run's ``--tree`` or dataset (checkpoints)."""
    from in21k.dataset import PreparedDataset
    from in21k.tree import BUILTIN_TREES, SemanticTree

    if isinstance(obj.get("tree"), dict):
        return SemanticTree.from_dict(obj["tree"])
    cfg = obj.get("config") or {}
    if cfg.get("tree"):
        if cfg["tree"] in BUILTIN_TREES or storage.exists(cfg["tree"]):
            return SemanticTree.load(cfg["tree"])
    elif cfg.get("data"):
        # Saved with its credentials redacted: what is left (an endpoint) plus the environment's credentials.
        options = strip_redacted((cfg.get("loader") or {}).get("storage_options"))[0]
        try:
            return SemanticTree.from_dict(PreparedDataset.open(cfg["data"], storage_options=options).tree_data())
        except (DataError, StorageError):
            pass
    raise DataError(
        f"{path} does not carry its tree and the run's tree ({cfg.get('tree') or cfg.get('data') or 'unknown'}) "
        "cannot be read from here; give --tree (the prepared dataset's tree.json)"
    )


def read_trained_model(
    path: str | Path,
    *,
    model_name: str | None = None,
    tree: SemanticTree | str | None = None,
    image_size: int | None = None,
    weights: str = "model",
) -> TrainedModel:
    """Load a trained 21K model from ``path`` (any of the three formats of the module docstring).

    ``model_name``, ``tree`` and ``image_size`` override what the file says (and are required for the
    original's format, ``image_size`` defaulting to 224). ``weights="ema"`` takes the EMA weights of one of
    our files (an error when it has none).
    """
    from in21k.loaders.transforms import MIIL_MEAN, MIIL_STD, build_transform
    from in21k.training.model import build_model, load_weights_file

    if weights not in ("model", "ema"):
        raise ConfigError(f"weights must be 'model' or 'ema', got {weights!r}")
    if hub.is_export(path):
        return _read_export(path, model_name=model_name, tree=_load_tree(tree), image_size=image_size, weights=weights)
    obj = load_weights_file(path)
    what = identify(obj, path)
    if what.task == SINGLE_LABEL:
        raise DataError(
            f"{path} is a fine-tuned single-label model (in21k finetune): it has no semantic 21K head to read"
        )
    tree = _load_tree(tree)
    kind = what.kind
    if kind != "foreign":
        cfg = obj.get("config") or {}
        if model_name and model_name != obj["model_name"]:
            raise ConfigError(f"{path} holds a {obj['model_name']} model, not {model_name}; drop --model or fix it")
        model_name = obj["model_name"]
        if tree is None:
            tree = _checkpoint_tree(obj, path)
        elif isinstance(obj.get("tree"), dict):
            from in21k.tree import SemanticTree

            own = SemanticTree.from_dict(obj["tree"])
            if own.wnids != tree.wnids:
                raise DataError(
                    f"{path} was trained on another class list ({own.num_classes} classes) than the tree given "
                    f"({tree.num_classes}); its head's rows would be read as the wrong classes"
                )
        state = _tensors(obj.get(weights))
        if state is None:
            raise DataError(f"{path} has no {weights!r} weights (was the run trained with --ema?)")
        image_size = image_size or int(obj.get("image_size") or cfg.get("image_size") or 224)
        transform = str((cfg.get("loader") or {}).get("transform") or cfg.get("transform") or "miil")
        if "mean" in obj and "std" in obj:
            mean, std = tuple(obj["mean"]), tuple(obj["std"])
        else:
            tf = build_transform(transform, image_size=image_size, train=False)
            mean, std = tf.mean, tf.std
    else:
        state = None
        if isinstance(obj, dict):
            for key in (None, "state_dict", "model"):
                state = _tensors(obj if key is None else obj.get(key))
                if state is not None:
                    break
        if state is None:
            raise DataError(f"{path} is neither one of our checkpoints nor a state dict (top level or 'state_dict')")
        if weights == "ema":
            raise ConfigError(f"{path} is a plain state dict: it has no separate EMA weights; drop --weights ema")
        if not model_name or tree is None:
            raise ConfigError(
                f"{path} is a plain state dict (the original's published format): give the architecture and the "
                "tree, e.g. --model resnet50 --tree fall11"
            )
        image_size = image_size or 224
        transform, mean, std = "miil", MIIL_MEAN, MIIL_STD
    model = build_model(name=model_name, num_classes=tree.num_classes, image_size=image_size)
    _load_strict(model, state, path, tree.num_classes)
    model.eval()
    log.info("loaded %s (%s, %s weights): %d classes, %d px", path, model_name, weights, tree.num_classes, image_size)
    return TrainedModel(
        model=model,
        model_name=model_name,
        tree=tree,
        image_size=int(image_size),
        mean=tuple(mean),
        std=tuple(std),
        transform=transform,
        kind=kind,
        weights=weights,
        config=dict(obj.get("config") or {}) if kind != "foreign" else {},
    )


def _read_export(
    path: str | Path, *, model_name: str | None, tree: SemanticTree | None, image_size: int | None, weights: str
) -> TrainedModel:
    """An exported folder (``training.hub``): its own architecture, preprocessing and tree unless given."""
    from in21k.training.model import build_model

    export = hub.read_export(path)
    if weights == "ema":
        raise ConfigError(
            f"{path} is an exported folder: it holds the one set of weights chosen at export; drop --weights ema"
        )
    if model_name and model_name != export.model_name:
        raise ConfigError(f"{path} holds a {export.model_name} model, not {model_name}; drop --model or fix it")
    if tree is None:
        if export.tree is None:
            raise ConfigError(f"{path} is a timm model folder without an in21k tree file: give --tree")
        tree = export.tree
    elif export.tree is not None and export.tree.wnids != tree.wnids:
        raise DataError(
            f"{path} was trained on another class list ({export.tree.num_classes} classes) than the tree given "
            f"({tree.num_classes}); its head's rows would be read as the wrong classes"
        )
    image_size = image_size or export.image_size
    model = build_model(name=export.model_name, num_classes=tree.num_classes, image_size=image_size)
    _load_strict(model, dict(export.state), Path(path), tree.num_classes)
    model.eval()
    log.info(
        "loaded the exported folder %s (%s, %s head): %d classes, %d px",
        path,
        export.model_name,
        export.head,
        tree.num_classes,
        image_size,
    )
    return TrainedModel(
        model=model,
        model_name=export.model_name,
        tree=tree,
        image_size=int(image_size),
        mean=export.mean,
        std=export.std,
        transform=export.transform,
        kind="export",
        weights="model",
        config=dict((export.config.get("in21k") or {}).get("run_config") or {}),
    )


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], path: Path, num_classes: int) -> None:
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    wrong = [k for k in state if k in target and tuple(state[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or wrong:
        detail = []
        if wrong:
            k = wrong[0]
            detail.append(f"shape of {k}: file {list(state[k].shape)} vs model {list(target[k].shape)}")
        if missing:
            detail.append(f"{len(missing)} model tensors missing (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unknown tensors (e.g. {unexpected[0]})")
        raise DataError(
            f"{path} does not fit this architecture with a {num_classes}-class head: {'; '.join(detail)}. "
            "Check --model (and --tree: the head must have one output per tree class)"
        )
    model.load_state_dict(state)


def classifier_layer(model: nn.Module) -> nn.Linear:
    """The model's final ``nn.Linear`` (timm's ``get_classifier()``), for head surgery."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Linear):
        raise ConfigError(
            f"{type(model).__name__}'s classifier is {type(head).__name__}, not a Linear layer; "
            "head mapping supports models whose classifier is one Linear layer"
        )
    return head
