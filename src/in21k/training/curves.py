"""The PNG of a run's training curves (``curves.png``), drawn from its ``metrics.jsonl`` (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

from in21k.training.rundir import read_metrics


def plot_curves(metrics_path: Path, out: Path) -> Path | None:
    """Train loss and lr per step, validation semantic top-1 per epoch, from ``metrics.jsonl``."""
    if not metrics_path.exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = read_metrics(metrics_path, "train"), read_metrics(metrics_path, "val")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train])
    axes[0].set(title="train loss", xlabel="step")
    axes[1].plot([r["step"] for r in train], [r["lr"] for r in train])
    axes[1].set(title="learning rate", xlabel="step")
    axes[2].plot([r["epoch"] for r in val], [r["semantic_top1"] for r in val], marker="o", label="semantic top-1")
    axes[2].plot([r["epoch"] for r in val], [r["top1"] for r in val], marker="o", label="top-1")
    axes[2].set(title="validation", xlabel="epoch", ylim=(0, 1))
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
