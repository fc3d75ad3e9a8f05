"""Semantic-softmax training: the loss, the metric, and the ``in21k train`` loop.

``SemanticSoftmaxLoss`` and ``semantic_accuracy`` are imported lazily so that ``in21k --help`` (which
imports ``in21k.training.cli``) does not pay for importing torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SemanticAccuracy", "SemanticLevels", "SemanticSoftmaxLoss", "semantic_accuracy"]

_LAZY = {
    "SemanticSoftmaxLoss": "in21k.training.losses",
    "SemanticLevels": "in21k.training.levels",
    "SemanticAccuracy": "in21k.training.metrics",
    "semantic_accuracy": "in21k.training.metrics",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'in21k.training' has no attribute {name!r}")
