"""Semantic top-1 accuracy: per level, argmax over the level's classes against the level target (docs/design.md,
"Semantic top-1").

The result holds summable counts (correct and valid (sample, level) pairs per level) so that batches
add up and ranks all-reduce exactly; ratios are taken only at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from in21k.training.levels import SemanticLevels

if TYPE_CHECKING:
    from in21k.tree import SemanticTree


@dataclass
class SemanticAccuracy:
    """Counts per used level: ``correct[j]`` and ``valid[j]`` (int64 tensors), ``level_ids[j]`` the tree depth."""

    correct: torch.Tensor
    valid: torch.Tensor
    level_ids: list[int]

    def __add__(self, other: SemanticAccuracy) -> SemanticAccuracy:
        if other.level_ids != self.level_ids:
            raise ValueError("cannot add semantic accuracies computed over different levels")
        return SemanticAccuracy(
            self.correct + other.correct.to(self.correct.device),
            self.valid + other.valid.to(self.valid.device),
            self.level_ids,
        )

    @property
    def top1(self) -> float:
        """Correct (sample, level) pairs over valid pairs, in [0, 1] (0 when nothing was seen)."""
        total = int(self.valid.sum())
        return int(self.correct.sum()) / total if total else 0.0

    @property
    def per_level(self) -> dict[int, float]:
        """Accuracy per tree level (levels without a valid sample are left out)."""
        return {
            k: int(c) / int(v) for k, c, v in zip(self.level_ids, self.correct, self.valid, strict=False) if int(v) > 0
        }

    def all_reduce(self) -> SemanticAccuracy:
        """Sum the counts over all ranks (no-op without an initialised process group)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        counts = torch.stack([self.correct, self.valid])
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        return SemanticAccuracy(counts[0], counts[1], self.level_ids)

    def to_dict(self) -> dict[str, Any]:
        return {
            "semantic_top1": self.top1,
            "per_level": {str(k): v for k, v in self.per_level.items()},
            "valid_pairs": int(self.valid.sum()),
        }


@torch.no_grad()
def semantic_accuracy(
    logits: torch.Tensor, labels: torch.Tensor, levels: SemanticLevels | SemanticTree
) -> SemanticAccuracy:
    """Semantic top-1 counts of one batch. ``levels``: a ``SemanticLevels`` (reuse it) or a ``SemanticTree``.

    Only levels with >= 2 classes count (the same levels as ``SemanticSoftmaxLoss``): a one-class level
    is always right and would inflate the figure.
    """
    if not isinstance(levels, SemanticLevels):
        levels = SemanticLevels(levels).to(logits.device)
    targets = levels.semantic_targets(labels.to(levels.targets.device)).to(logits.device)
    correct = []
    for j in range(levels.num_levels):
        pred = logits.index_select(1, levels.index(j).to(logits.device)).argmax(dim=1)
        correct.append(((pred == targets[:, j]) & (targets[:, j] >= 0)).sum())
    return SemanticAccuracy(torch.stack(correct).long(), (targets >= 0).sum(dim=0).long(), list(levels.level_ids))
