"""The preprocessing job: raw ImageNet-21K release -> class-mixed WebDataset shards, manifest, tree.

``prepare(cfg)`` runs the whole job on Ray (local by default); see ``docs/pipeline.md``.
"""

from __future__ import annotations

from typing import Any

from in21k.pipeline.options import PrepareConfig

__all__ = ["PrepareConfig", "prepare"]


def prepare(cfg: PrepareConfig) -> dict[str, Any]:
    """Run ``in21k prepare`` for ``cfg``; returns the summary (totals, shard counts, timings)."""
    from in21k.pipeline.job import prepare as run

    return run(cfg)
