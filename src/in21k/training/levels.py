"""The per-level view of a semantic tree that the loss and the metric share, as index tensors.

Built once from a ``SemanticTree``: which levels take part (those with at least two classes), the
class indices of each level (to slice the logits), the ``[num_classes, num_levels]`` target table
(gathered once per batch) and the level weights ``W_k = N / #{classes with depth >= k}``, clamped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from in21k.errors import ConfigError

if TYPE_CHECKING:
    from in21k.tree import SemanticTree


class SemanticLevels(nn.Module):
    """Index tensors for the semantic softmax (buffers, so ``.to(device)`` moves them with the model)."""

    def __init__(self, tree: SemanticTree, *, max_level_weight: float = 20.0, min_level_classes: int = 2) -> None:
        super().__init__()
        if min_level_classes < 1:
            raise ConfigError(f"min_level_classes must be >= 1, got {min_level_classes}")
        sizes = [len(level) for level in tree.levels]
        n = tree.num_classes
        # Every level with enough classes, deepest included (the original dropped the deepest: docs/design.md).
        self.level_ids: list[int] = [k for k, size in enumerate(sizes) if size >= min_level_classes]
        if not self.level_ids:
            raise ConfigError(
                f"the tree has no level with >= {min_level_classes} classes; "
                "use --loss single-label for this class list"
            )
        self.level_sizes: list[int] = [sizes[k] for k in self.level_ids]
        self.num_classes = n
        for j, k in enumerate(self.level_ids):
            self.register_buffer(f"index_{j}", torch.as_tensor(tree.levels[k], dtype=torch.long), persistent=False)
        targets = torch.as_tensor(tree.targets, dtype=torch.long)[:, self.level_ids]
        self.register_buffer("targets", targets.contiguous(), persistent=False)
        at_or_below = [sum(sizes[k:]) for k in range(len(sizes))]
        weights = [min(n / at_or_below[k], max_level_weight) for k in self.level_ids]
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32), persistent=False)

    @property
    def num_levels(self) -> int:
        return len(self.level_ids)

    def index(self, j: int) -> torch.Tensor:
        """Class indices (into the logits) of the ``j``-th used level."""
        return getattr(self, f"index_{j}")

    def semantic_targets(self, labels: torch.Tensor) -> torch.Tensor:
        """``[B, num_levels]``: each sample's target position per level, -1 where it has none (one gather)."""
        return self.targets.index_select(0, labels)
