"""Training losses: the semantic softmax of the original work, and plain single-label cross-entropy.

Semantic softmax (docs/design.md, "Semantic softmax"): one softmax per hierarchy level over that level's
classes. For each level the target is the sample's ancestor at that level (or "ignore" below the sample's
own depth); cross-entropy with label smoothing ``(1-e)*onehot + e/n_level``, ignored rows contribute zero,
and each level's loss is averaged over the whole batch (not over its valid rows), then
``total = sum_k W_k * L_k``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from in21k.errors import ConfigError
from in21k.training.levels import SemanticLevels

if TYPE_CHECKING:
    from in21k.tree import SemanticTree


class SemanticSoftmaxLoss(nn.Module):
    """Semantic softmax loss over a ``SemanticTree``; ``forward(logits [B, C], labels [B]) -> scalar``.

    ``label_smoothing`` is the original's 0.2 by default; ``max_level_weight`` clamps ``W_k`` (20).
    Levels with fewer than ``min_level_classes`` classes are left out (a one-class softmax is constant).
    """

    def __init__(
        self,
        tree: SemanticTree,
        *,
        label_smoothing: float = 0.2,
        max_level_weight: float = 20.0,
        min_level_classes: int = 2,
    ) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.levels = SemanticLevels(tree, max_level_weight=max_level_weight, min_level_classes=min_level_classes)
        self.label_smoothing = float(label_smoothing)

    def level_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``[num_levels]``: each level's loss, averaged over the whole batch (unweighted)."""
        if logits.ndim != 2 or logits.shape[1] != self.levels.num_classes:
            raise ValueError(
                f"logits must be [batch, {self.levels.num_classes}] (the tree's classes), got {list(logits.shape)}"
            )
        # Float32 for the log-softmax even under autocast: bf16 sums over thousands of classes lose precision.
        logits = logits.float()
        targets = self.levels.semantic_targets(labels)  # [B, L], -1 = ignore
        valid = targets >= 0
        safe = targets.clamp_min(0)
        eps = self.label_smoothing
        batch = logits.shape[0]
        out = []
        for j in range(self.levels.num_levels):
            logp = F.log_softmax(logits.index_select(1, self.levels.index(j)), dim=1)
            nll = -logp.gather(1, safe[:, j : j + 1]).squeeze(1)
            if eps > 0:
                # (1-e)*onehot + e/n: the uniform part is the mean negative log-probability over the level.
                nll = (1.0 - eps) * nll - eps * logp.mean(dim=1)
            out.append(torch.where(valid[:, j], nll, torch.zeros_like(nll)).sum() / batch)
        return torch.stack(out)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (self.level_losses(logits, labels) * self.levels.weights).sum()


class SingleLabelLoss(nn.Module):
    """Plain softmax cross-entropy over all classes (``--loss single-label``), with label smoothing."""

    def __init__(self, *, label_smoothing: float = 0.2) -> None:
        super().__init__()
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)


def build_loss(
    name: str, tree: SemanticTree, *, label_smoothing: float = 0.2, max_level_weight: float = 20.0
) -> nn.Module:
    """``semantic`` or ``single-label``, by name."""
    if name == "semantic":
        return SemanticSoftmaxLoss(tree, label_smoothing=label_smoothing, max_level_weight=max_level_weight)
    if name == "single-label":
        return SingleLabelLoss(label_smoothing=label_smoothing)
    raise ConfigError(f"unknown loss {name!r}; choose semantic or single-label")
