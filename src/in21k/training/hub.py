"""The exported model folder (``in21k export``): timm's hub layout, and the only module that knows its files.

An export is a folder that ``timm.create_model("local-dir:DIR", pretrained=True)`` loads without in21k, and that
can be pushed to the Hugging Face hub as it is (timm's ``hf-hub:`` names read the same two files)::

    DIR/
      model.safetensors   the weights: the model's state dict, as timm saves it
      config.json         what timm reads (below), plus our own "in21k" entry, which timm ignores
      tree.json           the semantic tree the head's rows follow (schema in21k.semantic-tree/1)
      README.md           the model card (training.export)

``config.json`` holds exactly the fields timm 1.0's ``load_model_config_from_path`` reads: ``architecture``
(the timm model name), ``num_classes``, ``num_features``, ``label_names`` (one per head row, in class order)
and ``label_descriptions`` (label name -> description), at the top level as timm's own ``save_for_hf`` writes
them, and ``pretrained_cfg``, whose keys must all be fields of timm's ``PretrainedCfg`` (it is built with
``PretrainedCfg(**pretrained_cfg)``): the input (``input_size``, ``fixed_input_size``), the preprocessing the
model was validated with (``interpolation``, ``crop_pct``, ``crop_mode``, ``mean``, ``std``; our squash is
timm's ``crop_mode="squash"`` with ``crop_pct`` 1), ``num_classes``, and the layer names ``first_conv``,
``classifier``, ``pool_size`` that timm adapts pretrained weights with.

The labels: ``label_names`` are the classes' WordNet lemma names (``"goldfish, Carassius auratus"``); a name
that two classes share (fall11 has 228 such names: "crane" the bird and the machine, ...) gets the class's wnid
appended, ``"crane (n02012849)"``, because timm maps descriptions by name. ``label_descriptions`` are WordNet
3.0's glosses.

``in21k`` (ours): ``schema`` (``in21k.export/1``), ``head`` and ``tree`` (the tree file's name), the loader
transform the preprocessing came from, the file it was exported from and the run's config (both redacted:
nothing in an export is secret). ``head`` says how the
head's outputs are read:

- ``semantic-softmax`` (``in21k export --tree-head``): one softmax per level of the tree, as the model was
  trained; ``tree.json`` keeps ``levels`` and ``class_tree``, and ``in21k predict DIR`` answers per level;
- ``softmax``: one softmax over all classes, as timm reads any classifier (and reads its own ImageNet-21K models,
  which were trained with the semantic softmax too); ``tree.json`` keeps the classes with their wnids, names and
  parents only, and ``in21k predict DIR`` answers with the top classes over the whole head.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from in21k.errors import DataError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from in21k.tree import SemanticTree

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TREE = "tree.json"
CARD = "README.md"
SCHEMA = "in21k.export/1"
SEMANTIC_HEAD = "semantic-softmax"
FLAT_HEAD = "softmax"
HEADS = (SEMANTIC_HEAD, FLAT_HEAD)
# What a level-free tree file keeps of each class (the rest of tree.json's schema is derived from these).
_TREE_LEVEL_KEYS = ("levels", "class_tree", "num_levels")


def is_export(path: str | Path) -> bool:
    """Whether ``path`` is a local folder in this layout (its ``config.json`` and ``model.safetensors``)."""
    folder = Path(str(path))
    return folder.is_dir() and (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file()


def label_names(tree: SemanticTree) -> list[str]:
    """One label per head row, in class order: the lemma names, with the wnid appended where a name repeats."""
    counts = Counter(tree.names)
    pairs = zip(tree.names, tree.wnids, strict=True)
    return [name if counts[name] == 1 else f"{name} ({wnid})" for name, wnid in pairs]


def preprocessing(
    transform: str,
    *,
    image_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    timm_args: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """timm's ``pretrained_cfg`` entries for the eval preprocessing of our loader ``transform`` (``miil``/``eval``:
    squash to ``image_size``, bilinear; ``timm``: timm's eval preset, resize the short side and centre crop)."""
    if transform == "timm":
        args = dict(timm_args or {})
        crop_mode, crop_pct = str(args.get("crop_mode", "center")), float(args.get("crop_pct", 0.875))
        interpolation = str(args.get("interpolation", "bilinear"))
    else:
        crop_mode, crop_pct, interpolation = "squash", 1.0, "bilinear"
    return {
        "input_size": [3, int(image_size), int(image_size)],
        "interpolation": interpolation,
        "crop_pct": crop_pct,
        "crop_mode": crop_mode,
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
    }


def hub_config(
    model: nn.Module,
    *,
    model_name: str,
    tree: SemanticTree,
    descriptions: list[str],
    preprocess: dict[str, Any],
    head: str,
    transform: str,
    source: str,
    run_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``config.json`` (module docstring) of ``model``, a timm ``model_name`` with one head row per ``tree`` class."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    labels = label_names(tree)
    base = dict(getattr(model, "pretrained_cfg", None) or {})  # the architecture's default: its layer names
    size = preprocess["input_size"]
    same_size = tuple(base.get("input_size") or ()) == tuple(size)
    pretrained_cfg = {
        **preprocess,
        "fixed_input_size": bool(base.get("fixed_input_size", False)),
        "num_classes": tree.num_classes,
        "first_conv": base.get("first_conv"),
        "classifier": base.get("classifier"),
        "pool_size": list(base["pool_size"]) if same_size and base.get("pool_size") else None,
        "description": f"{model_name} pretrained on ImageNet-21K with the semantic softmax (in21k)",
    }
    return {
        "architecture": model_name,
        "num_classes": tree.num_classes,
        "num_features": int(getattr(model, "num_features", 0) or 0),
        "label_names": labels,
        "label_descriptions": dict(zip(labels, descriptions, strict=True)),
        "pretrained_cfg": pretrained_cfg,
        "in21k": {
            "schema": SCHEMA,
            "head": head,
            "tree": TREE,
            "transform": transform,
            "source": source,
            "run_config": run_config or {},
        },
    }


def tree_file(tree: SemanticTree, *, head: str) -> dict[str, Any]:
    """``tree.json`` of an export: the whole tree with its levels for a per-level head, else its classes only."""
    data = tree.to_dict()
    if head != SEMANTIC_HEAD:
        data = {k: v for k, v in data.items() if k not in _TREE_LEVEL_KEYS}
    return data


@dataclass
class Export:
    """What an export folder holds, read back: enough to rebuild and feed the model without timm's loader."""

    path: Path
    model_name: str
    num_classes: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    transform: str  # the loader transform whose eval variant is the folder's preprocessing
    head: str
    tree: SemanticTree | None  # None for a timm folder not written by in21k (no tree file)
    state: dict[str, torch.Tensor]
    config: dict[str, Any]


def read_config(path: str | Path) -> dict[str, Any]:
    folder = Path(str(path))
    try:
        config = json.loads((folder / CONFIG).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{folder / CONFIG} is not a readable config.json ({exc})") from None
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise DataError(f"{folder / CONFIG} has no 'architecture': not a timm model folder")
    ours = config.get("in21k")
    if isinstance(ours, dict) and ours.get("schema") not in (None, SCHEMA):
        raise DataError(
            f"{folder} is an in21k export of schema {ours.get('schema')!r}, which this version of in21k cannot read "
            f"(it reads {SCHEMA}); upgrade in21k"
        )
    return config


def read_export(path: str | Path) -> Export:
    """An export folder (ours, or any timm hub folder: then without a tree); ``DataError`` when it is damaged."""
    from in21k.tree import SemanticTree, TreeClass

    folder = Path(str(path))
    config = read_config(folder)
    ours = config.get("in21k") if isinstance(config.get("in21k"), dict) else {}
    cfg = config.get("pretrained_cfg") or {}
    size = cfg.get("input_size") or [3, 224, 224]
    head = str(ours.get("head") or FLAT_HEAD)
    if head not in HEADS:
        raise DataError(f"{folder / CONFIG}: unknown head {head!r} (one of {', '.join(HEADS)})")
    tree = None
    tree_path = folder / str(ours.get("tree") or TREE)
    if ours and tree_path.is_file():
        data = json.loads(tree_path.read_text())
        tree = SemanticTree.from_dict(data)
        if head == FLAT_HEAD:  # one softmax over the whole head: every class on one level
            tree = SemanticTree([TreeClass(c.index, c.wnid, c.name, 0, -1) for c in tree.classes], extra=tree.extra)
    num_classes = int(config.get("num_classes") or cfg.get("num_classes") or 0)
    if tree is not None and tree.num_classes != num_classes:
        raise DataError(f"{folder}: {tree_path.name} has {tree.num_classes} classes but config.json {num_classes}")
    try:
        from safetensors.torch import load_file

        state = load_file(str(folder / WEIGHTS), device="cpu")
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file
        raise DataError(f"{folder / WEIGHTS} is not a readable safetensors file ({exc})") from None
    transform = str(ours.get("transform") or ("miil" if cfg.get("crop_mode") == "squash" else "timm"))
    return Export(
        path=folder,
        model_name=config["architecture"],
        num_classes=num_classes,
        image_size=int(size[-1]),
        # (timm's own defaults where a foreign folder leaves them out: PretrainedCfg's ImageNet mean and std)
        mean=tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))),
        transform=transform,
        head=head,
        tree=tree,
        state=state,
        config=config,
    )
