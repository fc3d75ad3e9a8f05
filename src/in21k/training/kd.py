"""Semantic knowledge distillation (``in21k train --teacher CKPT``): the loss and the teacher.

The loss (docs/design.md, "Semantic KD"): at every level of the tree, the softmax of the student's and of the
teacher's logits over that level's classes; the squared differences of the two distributions, summed
over the level's classes (the element-wise MSE times ``n_level``, so that a 10,000-class level does not
vanish next to a 10-class one), weighted per sample by the teacher's confidence at that level (the sum of
its top ``ceil(n_level / 20)`` probabilities, i.e. its top 5%), averaged over the batch; summed over the
levels (no level weights). Levels with one class are left out, as in the semantic softmax (their softmax
is constant). The total training loss is ``semantic softmax + kd_weight * KD``.

The teacher is any timm model with a head for the same tree, loaded by ``in21k.training.pretrained``
(our ``model.pt``/checkpoints or the original's published state dicts), in eval mode, without gradients,
on the same batch (the same device-side normalisation). It is not saved into the student's checkpoints:
a resumed run reloads it from ``--teacher``.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from in21k.errors import ConfigError, DataError
from in21k.training.levels import SemanticLevels

if TYPE_CHECKING:
    from in21k.tree import SemanticTree

log = logging.getLogger(__name__)


class SemanticKDLoss(nn.Module):
    """``forward(student_logits [B, C], teacher_logits [B, C]) -> scalar``; see the module docstring."""

    def __init__(self, tree: SemanticTree | SemanticLevels, *, top_fraction: float = 0.05) -> None:
        super().__init__()
        if not 0.0 < top_fraction <= 1.0:
            raise ConfigError(f"top_fraction must be in (0, 1], got {top_fraction}")
        self.levels = tree if isinstance(tree, SemanticLevels) else SemanticLevels(tree)
        # ceil(n / 20) for the default 5%; the small epsilon keeps e.g. 0.05 * 40 = 2.0000000000000004 at 2.
        self.top_k = [max(1, math.ceil(n * top_fraction - 1e-9)) for n in self.levels.level_sizes]

    def level_losses(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """``[num_levels]``: each level's confidence-weighted squared distance, averaged over the batch."""
        n = self.levels.num_classes
        if student.ndim != 2 or student.shape[1] != n or teacher.shape != student.shape:
            raise DataError(
                f"student and teacher logits must both be [batch, {n}], got {list(student.shape)} and "
                f"{list(teacher.shape)}; the teacher's head must cover the same tree"
            )
        # Float32 softmaxes even under autocast (as in the semantic softmax loss).
        student, teacher = student.float(), teacher.detach().float()
        out = []
        for j in range(self.levels.num_levels):
            idx = self.levels.index(j)
            p_s = F.softmax(student.index_select(1, idx), dim=1)
            p_t = F.softmax(teacher.index_select(1, idx), dim=1)
            confidence = p_t.topk(self.top_k[j], dim=1).values.sum(dim=1)
            out.append((confidence * (p_s - p_t).pow(2).sum(dim=1)).mean())
        return torch.stack(out)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return self.level_losses(student, teacher).sum()


class Teacher(nn.Module):
    """A frozen model in eval mode; ``forward`` runs without gradients and resizes the batch if it must."""

    def __init__(self, model: nn.Module, *, image_size: int | None) -> None:
        super().__init__()
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.image_size = image_size  # None: any input size (convolutional teachers see the batch as it is)
        self._warned = False

    def train(self, mode: bool = True) -> Teacher:
        # Always eval: BatchNorm statistics and dropout of the teacher must not follow the student's mode.
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.image_size is not None and (x.shape[-1] != self.image_size or x.shape[-2] != self.image_size):
            # A teacher trained at another size (e.g. a ViT with fixed position embeddings) sees the batch at its size.
            if not self._warned:
                log.info("teacher input resized from %dx%d to %d px", x.shape[-2], x.shape[-1], self.image_size)
                self._warned = True
            x = F.interpolate(
                x,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                align_corners=False,
                antialias=x.shape[-1] > self.image_size,
            )
        return self.model(x)


def build_teacher(
    path: str,
    *,
    tree: SemanticTree,
    device: torch.device,
    model_name: str | None = None,
    image_size: int | None = None,
    channels_last: bool = False,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> Teacher:
    """The teacher of ``--teacher PATH``; its head must cover ``tree`` (checked by wnids where the file has them)."""
    from in21k.training.pretrained import read_trained_model

    trained = read_trained_model(path, model_name=model_name, tree=tree, image_size=image_size)
    log.info("KD teacher: %s from %s (%s, %d px)", trained.model_name, path, trained.kind, trained.image_size)
    if mean is not None and std is not None and (tuple(mean), tuple(std)) != (trained.mean, trained.std):
        # The teacher sees the student's batch as it is (no renormalisation): warn when it was trained on another.
        log.warning(
            "the teacher was trained with mean %s / std %s, the student's batches use %s / %s",
            trained.mean,
            trained.std,
            tuple(mean),
            tuple(std),
        )
    model = trained.model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return Teacher(model, image_size=trained.image_size if needs_fixed_size(model) else None)


def needs_fixed_size(model: nn.Module) -> bool:
    """True for models that only accept their build size (timm ViTs with a strict patch embedding)."""
    embed = getattr(model, "patch_embed", None)
    return bool(getattr(embed, "strict_img_size", False)) and not getattr(model, "dynamic_img_size", False)
