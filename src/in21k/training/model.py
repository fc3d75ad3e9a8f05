"""Models: any timm architecture by name with a head sized from the tree, and ``--init`` weights.

``load_init_checkpoint`` reads a checkpoint (a plain state dict, or one under ``state_dict`` or ``model``, saved
by ``torch.save`` as ``.pth``/``.bin``, a ``.safetensors`` file as timm saves weights, or a folder in timm's hub
layout, e.g. one ``in21k export`` wrote) with
``torch.load(weights_only=True)`` (or safetensors' loader) and copies every tensor whose name AND shape match;
an ImageNet-1K checkpoint's 1000-class head (and anything else that differs) is skipped and logged, while the
weights of a model with this dataset's head layout (timm's ``*.miil_in21k`` models on a dataset prepared with
``--classes imagenet21k_miil``) load whole.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from in21k.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def build_model(*, name: str, num_classes: int, image_size: int | None = None, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=False, num_classes=num_classes)``; never downloads weights.

    ``image_size`` is passed as ``img_size`` to models that take it (ViTs), so they build at that size.
    """
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ConfigError(f"unknown timm model {name!r}" + (f"; similar: {', '.join(close)}" if close else ""))
    if image_size is not None:
        try:  # fixed-size architectures (ViTs) need img_size; convolutional ones reject the argument
            return timm.create_model(name, pretrained=False, num_classes=num_classes, img_size=image_size, **kwargs)
        except TypeError:
            pass
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)


@dataclass
class InitReport:
    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # checkpoint key -> reason
    missing: list[str] = field(default_factory=list)  # model keys the checkpoint did not provide


def is_safetensors(path: str | Path, raw: bytes) -> bool:
    """A safetensors file (timm's ``model.safetensors``): by its name, or by its header (an 8-byte length, then
    JSON), which neither of torch's formats (a zip, or a pickle) starts with."""
    return str(path).endswith(".safetensors") or (len(raw) > 8 and raw[:2] != b"PK" and raw[8:9] == b"{")


def load_weights_file(path: str | Path, *, what: str = "checkpoint") -> Any:
    """``torch.load`` of a local file or storage URL, restricted to plain data (``weights_only=True``); a
    safetensors file (how timm and the hubs save weights) is read as the state dict it holds."""
    import io

    from in21k import storage
    from in21k.training import hub

    if hub.is_export(path):  # an exported folder (in21k export, timm's hub layout): its weights file
        path = Path(str(path)) / hub.WEIGHTS
    try:
        storage.check_access(str(path))  # a remote file at a wrong address fails in seconds, with its cause
        raw = storage.read_bytes(str(path))
    except storage.NotFoundError:
        raise DataError(f"{what} {str(path)!r} does not exist") from None
    if is_safetensors(path, raw):
        try:
            from safetensors.torch import load
        except ImportError:
            raise DataError(f"{path} is a safetensors file: pip install safetensors to read it") from None
        try:
            return load(raw)
        except Exception as exc:  # noqa: BLE001 - a damaged or foreign file
            raise DataError(f"{path} is not a readable safetensors file ({exc})") from None
    try:
        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(
            f"{path} cannot be loaded with weights_only=True ({exc}); re-save it as a plain state dict of tensors"
        ) from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a file: top level, or under ``state_dict`` / ``model``; ``module.`` prefixes removed."""
    obj = load_weights_file(path, what="--init checkpoint")
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataError(f"{path} holds no state dict (looked at the top level, 'state_dict' and 'model')")
    out = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            out[k[len("module.") :] if k.startswith("module.") else k] = v
    return out


def load_init_checkpoint(model: nn.Module, path: str | Path) -> InitReport:
    """Copy the checkpoint's tensors into ``model`` where name and shape match; log what was loaded and skipped."""
    source = read_state_dict(path)
    target = model.state_dict()
    report = InitReport()
    matched = {}
    for key, tensor in source.items():
        if key not in target:
            report.skipped[key] = "not in model"
        elif tuple(tensor.shape) != tuple(target[key].shape):
            report.skipped[key] = f"shape {list(tensor.shape)} != model {list(target[key].shape)}"
        else:
            matched[key] = tensor
            report.loaded.append(key)
    report.missing = [k for k in target if k not in matched]
    model.load_state_dict(matched, strict=False)
    log.info(
        "--init %s: loaded %d tensors, skipped %d, model tensors not in checkpoint: %d",
        path,
        len(report.loaded),
        len(report.skipped),
        len(report.missing),
    )
    for key, why in report.skipped.items():
        log.info("--init skipped %s: %s", key, why)
    if report.missing:
        log.info(
            "--init left at random init: %s",
            ", ".join(report.missing[:20]) + (" ..." if len(report.missing) > 20 else ""),
        )
    if not report.loaded:
        raise DataError(f"--init {path}: no tensor matched the model by name and shape; is it the same architecture?")
    return report
