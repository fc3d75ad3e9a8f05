"""TensorBoard event files of a run: every record of ``metrics.jsonl`` also as scalars (rank 0 writes both).

Written through ``torch.utils.tensorboard.SummaryWriter`` into ``RUN_DIR/tensorboard/`` (the name is
``training.rundir``'s); ``tensorboard --logdir runs/`` shows every run under ``runs/``. The tags are the records'
own keys, at the optimizer step (docs/training.md, "Watching a run"):

- ``train/<key>`` of each ``train`` record: ``loss`` (and each loss part, e.g. ``kd_loss``), ``lr``,
  ``img_per_s``, ``data_wait`` (the share of step time spent waiting for the next batch) and, on GPUs,
  ``device_mem_gib`` (the window's peak of allocated device memory);
- ``val/<key>`` of each ``val`` record (``semantic_top1``, ``top1``, ``loss``, ...), ``val/level_<k>`` for the
  per-level accuracy, and ``val_ema/...`` the same for the EMA weights;
- ``loader/<key>`` of each ``loader`` record (the epoch's bad samples, unreadable shards, read retries).

A resumed run passes the step after the one it resumed at as ``purge_step``: TensorBoard then hides what a killed
run logged after its last checkpoint, which the resumed run logs again.
"""

from __future__ import annotations

import logging
import numbers
from pathlib import Path
from typing import Any

from in21k.errors import SetupError

log = logging.getLogger(__name__)

# Record fields that are positions, not measurements (the loader's rank, start step and segment among them).
_NOT_SCALARS = ("kind", "epoch", "step", "rank", "start_step", "segment")


def summary_writer(log_dir: Path, *, purge_step: int | None = None) -> Any:
    """``torch.utils.tensorboard.SummaryWriter`` on ``log_dir``; a ``SetupError`` naming the fix without it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        missing = f"TensorBoard event files need the tensorboard package ({exc})"
        raise SetupError(f"{missing}: pip install tensorboard") from None
    log_dir.mkdir(parents=True, exist_ok=True)
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The TensorBoard scalars of one ``metrics.jsonl`` record (module docstring), by tag."""
    kind = record.get("kind")
    prefix = {"train": "train", "val": "val", "loader": "loader"}.get(str(kind))
    if prefix is None:
        return {}
    out = _numbers(prefix, record)
    if kind == "val" and isinstance(record.get("ema"), dict):
        out.update(_numbers("val_ema", record["ema"]))
    return out


def _numbers(prefix: str, record: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in _NOT_SCALARS or isinstance(value, bool):
            continue
        if isinstance(value, numbers.Real):
            out[f"{prefix}/{key}"] = float(value)
        elif key == "per_level" and isinstance(value, dict):
            out.update({f"{prefix}/level_{k}": float(v) for k, v in value.items() if isinstance(v, numbers.Real)})
    return out


class EventWriter:
    """The event files of one run; made lazily at the first record (after a resume has set ``purge_step``)."""

    def __init__(self, log_dir: Path) -> None:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:  # at the start of a run, not at its first log line
            raise SetupError("TensorBoard event files need the tensorboard package: pip install tensorboard")
        self.log_dir = log_dir
        self.purge_step: int | None = None
        self._writer: Any = None
        self._step = 0  # loader records carry no step: they go at the last step seen

    def add(self, record: dict[str, Any]) -> None:
        if self._writer is None:
            import atexit

            self._writer = summary_writer(self.log_dir, purge_step=self.purge_step)
            atexit.register(self.close)  # a run that ends in an error still leaves what it logged
        self._step = int(record.get("step", self._step))
        for tag, value in scalars(record).items():
            self._writer.add_scalar(tag, value, global_step=self._step)
        if record.get("kind") != "train":  # epoch-level records: on disk now, not when the queue fills
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
