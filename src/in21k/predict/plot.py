"""``in21k predict --plot``: each image beside its predicted path through the hierarchy (matplotlib, Agg)."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from pathlib import Path

from in21k.errors import ConfigError
from in21k.predict.inputs import InputImage
from in21k.predict.predictor import ImagePrediction

MAX_ROWS = 32  # one figure; more images than this make an unreadable PNG


def plot_predictions(
    images: Sequence[InputImage], predictions: Sequence[ImagePrediction], out: str | Path, *, threshold: float
) -> Path:
    """One row per image (at most ``MAX_ROWS``): the image, then its kept path as an indented tree."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt
    from PIL import Image

    rows = [(img, pred) for img, pred in zip(images, predictions, strict=True)][:MAX_ROWS]
    if not rows:
        raise ConfigError("nothing to plot")
    fig, axes = plt.subplots(
        len(rows), 2, figsize=(11, 3.2 * len(rows)), squeeze=False, gridspec_kw={"width_ratios": [1, 1.6]}
    )
    for (img, pred), (ax_img, ax_txt) in zip(rows, axes, strict=True):
        ax_img.axis("off")
        ax_txt.axis("off")
        title = textwrap.shorten(Path(img.name).name if "://" not in img.name else img.name, 60)
        ax_img.set_title(title, fontsize=9)
        if pred.error is None and img.data is not None:
            try:
                ax_img.imshow(Image.open(io.BytesIO(img.data)).convert("RGB"))
            except Exception:  # noqa: BLE001 (the prediction already succeeded; a display problem is not fatal)
                pass
        if pred.error is not None:
            lines = [f"error: {pred.error}"]
        elif not pred.path:
            best = pred.levels[0][0] if pred.levels else None
            lines = [f"no level above {threshold:g}"] + (
                [f"(level 0 best: {textwrap.shorten(best.name, 40)} {best.prob:.2f})"] if best else []
            )
        else:
            lines = [f"predicted path (levels with p > {threshold:g}):"]
            for depth, p in enumerate(pred.path):
                branch = "" if depth == 0 else "   " * (depth - 1) + "└─ "
                lines.append(f"{branch}{textwrap.shorten(p.name, 48)}  [{p.wnid}]  {p.prob:.3f}")
        ax_txt.text(
            0.0, 0.95, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=9, transform=ax_txt.transAxes
        )
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
