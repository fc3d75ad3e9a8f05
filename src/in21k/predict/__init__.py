"""Semantic inference: ``in21k predict`` (per-level predictions with WordNet names, a hierarchy path, a plot).

Names are imported lazily so that ``in21k --help`` (which imports ``in21k.predict.cli``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Predictor": "in21k.predict.predictor",
    "ImagePrediction": "in21k.predict.predictor",
    "LevelPrediction": "in21k.predict.predictor",
    "read_inputs": "in21k.predict.inputs",
    "plot_predictions": "in21k.predict.plot",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'in21k.predict' has no attribute {name!r}")
