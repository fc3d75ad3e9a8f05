"""Per-level semantic predictions of a trained 21K model, and its predicted path through the hierarchy.

The model's logits are split by tree level and each level gets its own softmax, as in training. For
every level we report the top classes of that level's softmax (``levels``), and we read the **path**
down the tree: at level 0 the most probable class; at each deeper level the most probable class among
the *children of the class chosen one level up*; a level is kept while its chosen class's probability
is above ``threshold`` (0.5 by default, as the original's visualiser), and the walk stops at the first
level that is not (anything deeper would hang from a rejected class). Every kept class is therefore the
parent of the next one. With a threshold of at least 0.5 the kept path is exactly the original
visualiser's per-level winners above the threshold, up to the first level where those winners stop
forming a chain (a class above 0.5 is its level's unique winner).

Preprocessing is the model's validation preprocessing: the loader's eval transform of the training
transform (``miil``/``eval``: squash to the image size; ``timm``: resize and centre crop), then
``(x/255 - mean) / std`` on the device, as ``in21k.training.feed.DecodedFeed`` does in validation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from in21k.errors import ConfigError
from in21k.predict.inputs import InputImage
from in21k.training.pretrained import TrainedModel

log = logging.getLogger(__name__)


@dataclass
class LevelPrediction:
    level: int
    index: int  # class index (into the model's output and the tree)
    wnid: str
    name: str
    prob: float  # the class's probability in its level's softmax


@dataclass
class ImagePrediction:
    input: str
    path: list[LevelPrediction] = field(default_factory=list)  # root first; each the parent of the next
    levels: list[list[LevelPrediction]] = field(default_factory=list)  # per level: its top-k, unconstrained
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        def row(p: LevelPrediction) -> dict[str, Any]:
            return {**asdict(p), "prob": round(p.prob, 6)}

        out: dict[str, Any] = {"input": self.input}
        if self.error is not None:
            out["error"] = self.error
            return out
        out["path"] = [row(p) for p in self.path]
        out["levels"] = [{"level": tops[0].level, "top": [row(p) for p in tops]} for tops in self.levels if tops]
        return out


class Predictor:
    """``predict(images) -> [ImagePrediction]`` for one loaded model (see the module docstring)."""

    def __init__(
        self,
        trained: TrainedModel,
        *,
        device: torch.device | str = "cpu",
        threshold: float = 0.5,
        top_k: int = 3,
        batch_size: int = 32,
    ) -> None:
        from in21k.loaders.transforms import build_transform
        from in21k.training.feed import DecodedFeed

        if not 0.0 <= threshold < 1.0:
            raise ConfigError(f"threshold must be in [0, 1), got {threshold}")
        if top_k < 1 or batch_size < 1:
            raise ConfigError("top_k and batch_size must be >= 1")
        self.trained = trained
        self.device = torch.device(device)
        self.model = trained.model.to(self.device).eval()
        self.tree = trained.tree
        self.threshold = threshold
        self.top_k = top_k
        self.batch_size = batch_size
        self.transform = build_transform(trained.transform, image_size=trained.image_size, train=False)
        self.feed = DecodedFeed(device=self.device, mean=trained.mean, std=trained.std)
        self.level_index = [torch.as_tensor(lv, dtype=torch.long, device=self.device) for lv in self.tree.levels]
        parents = np.array([c.parent for c in self.tree.classes], dtype=np.int64)
        self.level_parent = [parents[np.asarray(lv, dtype=np.int64)] for lv in self.tree.levels]

    @torch.no_grad()
    def level_probs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per tree level, ``[B, n_level]`` softmax probabilities (float32, on the CPU)."""
        logits = self.model(x).float()
        return [torch.softmax(logits.index_select(1, idx), dim=1).cpu() for idx in self.level_index]

    def predict(self, images: Iterable[InputImage]) -> list[ImagePrediction]:
        from in21k.loaders.transforms import CorruptImageError

        results: list[ImagePrediction] = []
        pending: list[tuple[int, np.ndarray]] = []

        def flush() -> None:
            if not pending:
                return
            batch = torch.from_numpy(np.stack([arr for _, arr in pending])).permute(0, 3, 1, 2)
            x, _ = self.feed(batch, torch.zeros(len(pending), dtype=torch.long))
            probs = self.level_probs(x)
            for row, (slot, _) in enumerate(pending):
                results[slot] = self._read(results[slot].input, [p[row] for p in probs])
            pending.clear()

        for image in images:
            results.append(ImagePrediction(image.name, error=image.error))
            if image.error is not None:
                continue
            try:
                pending.append((len(results) - 1, self.transform(image.data)))
            except CorruptImageError as exc:
                results[-1].error = f"{image.name}: {exc}"
                log.warning("%s", results[-1].error)
            if len(pending) >= self.batch_size:
                flush()
        flush()
        return results

    def _pred(self, level: int, pos: int, prob: float) -> LevelPrediction:
        c = self.tree.classes[self.tree.levels[level][pos]]
        return LevelPrediction(level=level, index=c.index, wnid=c.wnid, name=c.name, prob=float(prob))

    def _read(self, name: str, probs: list[torch.Tensor]) -> ImagePrediction:
        levels = []
        for k, p in enumerate(probs):
            values, positions = p.topk(min(self.top_k, len(p)))
            levels.append([self._pred(k, int(i), float(v)) for v, i in zip(values, positions, strict=True)])
        path: list[LevelPrediction] = []
        parent = -1  # level 0: the roots, whose parent is -1
        for k, p in enumerate(probs):
            candidates = np.flatnonzero(self.level_parent[k] == parent)
            if len(candidates) == 0:
                break
            best = int(candidates[int(torch.argmax(p[torch.from_numpy(candidates)]))])
            if float(p[best]) <= self.threshold:
                break
            path.append(self._pred(k, best, float(p[best])))
            parent = path[-1].index
        return ImagePrediction(name, path=path, levels=levels)
