"""Streaming loaders: prepared WebDataset shards from disk or object storage to every rank, evenly and resumably.

``create_loader`` is the entry point; docs/loader.md describes the options and the guarantees. Names are
imported lazily so that importing the package (the option classes, the command line's ``--help``) does not
import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "create_loader": "in21k.loaders.loader",
    "LoaderSpec": "in21k.loaders.loader",
    "StreamingLoader": "in21k.loaders.loader",
    "LoaderOptions": "in21k.loaders.options",
    "FolderLoader": "in21k.loaders.folders",
    "scan_class_folders": "in21k.loaders.folders",
    "EpochPlan": "in21k.loaders.splitting",
    "Shard": "in21k.dataset",
    "WorkerPlan": "in21k.loaders.splitting",
    "plan_epoch": "in21k.loaders.splitting",
    "TRANSFORMS": "in21k.loaders.options",
    "build_transform": "in21k.loaders.transforms",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'in21k.loaders' has no attribute {name!r}")
