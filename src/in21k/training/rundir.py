"""The run directory of ``in21k train`` and ``in21k finetune``: every file a run writes, and the model file's format.

This module is the only place that names a run's files and knows the schemas of what a run saves; the
commands write through it and every reader (``read_trained_model``, ``in21k predict``, the KD teacher,
``in21k demo``, the curves) reads through it. It imports no torch, so the demo and the command-line help
can use it cheaply.

``RUN_DIR`` (``--out``)::

    config.yaml                    the merged config (rerun with --config RUN_DIR/config.yaml)
    metrics.jsonl                  one JSON object per line, rank 0 ("train", "val" and "loader" records)
    tensorboard/                   the same records as TensorBoard event files (training.events), rank 0
    logs/rank-R.log                every rank's log
    checkpoints/ckpt-<step>.pt     the last --run.keep-last checkpoints (step zero-padded to 9 digits)
    curves.png                     train loss, lr, validation accuracy (in21k train)
    head_init.json                 which head rows came from the 21K head (in21k finetune)
    model.pt                       the final model file

**The model file** (``model.pt``, built only by ``model_file``) is a dict of tensors and plain data read with
``torch.load(weights_only=True)``: ``schema`` (``in21k.model/1``), ``task``, ``model`` and ``ema`` (state
dicts; ``ema`` is ``None`` without ``--ema``), ``model_name`` (the timm architecture), ``image_size``,
``mean``/``std`` (the input normalisation), ``config`` (the run's merged config), and per task:

- ``semantic-softmax`` (``in21k train``): ``tree``, the semantic tree's dict. The head has one output per class
  of that tree and is read one softmax per tree level (``--loss single-label`` trains the same head with one
  softmax over all classes; ``config["loss"]`` says which).
- ``single-label`` (``in21k finetune``): ``classes`` (the class names, one per head output, one softmax) and
  ``source_checkpoint`` (the 21K model it was fine-tuned from).

**Checkpoints** carry the schema of the command that wrote them (``CHECKPOINT_SCHEMAS``): the engine's state
(``Engine.state_dict``) plus ``model_name``, ``config`` and the command's own fields.

**Files without a schema.** Model files written before the model file had a schema (the same dict without
``schema``; ``task`` present only for fine-tuned models) are still read: ``identify`` recognises them by their
``model_name`` and ``model`` entries. Anything else without an in21k schema is *foreign* (the original's
published ``.pth``, a timm state dict) and the reader must be told the architecture and the tree. A file with
an in21k schema this version does not know (a newer format) is refused with a ``DataError``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from in21k.errors import DataError

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
EVENTS = "tensorboard"
LOGS = "logs"
CHECKPOINTS = "checkpoints"
CURVES = "curves.png"
HEAD_INIT = "head_init.json"
MODEL = "model.pt"

_CHECKPOINT_NAME = re.compile(r"^ckpt-(\d+)\.pt$")

MODEL_SCHEMA = "in21k.model/1"
SEMANTIC = "semantic-softmax"
SINGLE_LABEL = "single-label"
TASK_FIELDS: dict[str, tuple[str, ...]] = {SEMANTIC: ("tree",), SINGLE_LABEL: ("classes", "source_checkpoint")}
CHECKPOINT_SCHEMAS = {"train": "in21k.train-checkpoint/1", "finetune": "in21k.finetune-checkpoint/1"}
CHECKPOINT_TASKS = {CHECKPOINT_SCHEMAS["train"]: SEMANTIC, CHECKPOINT_SCHEMAS["finetune"]: SINGLE_LABEL}


class RunDir:
    """The paths of one run directory (nothing is created by naming them)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.config = self.root / CONFIG
        self.metrics = self.root / METRICS
        self.events = self.root / EVENTS
        self.checkpoints = self.root / CHECKPOINTS
        self.curves = self.root / CURVES
        self.head_init = self.root / HEAD_INIT
        self.model = self.root / MODEL

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def log(self, rank: int) -> Path:
        return self.root / LOGS / f"rank-{rank}.log"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"ckpt-{step:09d}.pt"

    def list_checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (by step); a save's temporary file is not one."""
        if not self.checkpoints.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.checkpoints.iterdir() if (m := _CHECKPOINT_NAME.match(p.name))]
        return [p for _, p in sorted(found)]


# ----------------------------------------------------------------------------------------- metrics.jsonl
class MetricsWriter:
    """Appends records to ``metrics.jsonl`` on rank 0 (appends, so a resumed run continues the same file), and,
    with ``events_dir``, the same records to TensorBoard event files there (``training.events``)."""

    def __init__(self, path: Path, enabled: bool, *, events_dir: Path | None = None) -> None:
        self.path = path
        self.enabled = enabled
        self.events: Any = None
        if enabled and events_dir is not None:
            from in21k.training.events import EventWriter

            self.events = EventWriter(events_dir)

    @classmethod
    def for_run(cls, run: RunDir, *, enabled: bool) -> MetricsWriter:
        """The writer of a run directory: ``metrics.jsonl`` and ``tensorboard/``, on rank 0 (``enabled``)."""
        return cls(run.metrics, enabled, events_dir=run.events)

    def resumed_at(self, step: int) -> None:
        """The run continues from a checkpoint at ``step``: event files hide what was logged after it (which the
        resumed run logs again; what step ``step`` itself logged was done before the checkpoint and stays)."""
        if self.events is not None:
            self.events.purge_step = step + 1

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            if self.events is not None:
                self.events.add(record)

    def close(self) -> None:
        if self.events is not None:
            self.events.close()


def read_metrics(path: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (those of one ``kind``: ``train``, ``val``, ``loader``); none if absent."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if kind is None or r.get("kind") == kind]


# ----------------------------------------------------------------------------------------- the model file
def model_file(
    task: str,
    *,
    model: Mapping[str, Any],
    ema: Mapping[str, Any] | None,
    model_name: str,
    image_size: int,
    mean: tuple[float, ...] | list[float],
    std: tuple[float, ...] | list[float],
    config: dict[str, Any],
    **task_fields: Any,
) -> dict[str, Any]:
    """The dict saved as ``model.pt`` (module docstring); ``task_fields`` are the task's own entries."""
    if task not in TASK_FIELDS or set(task_fields) != set(TASK_FIELDS[task]):
        raise TypeError(f"a {task!r} model file takes {TASK_FIELDS.get(task)}, got {sorted(task_fields)}")
    return {
        "schema": MODEL_SCHEMA,
        "task": task,
        "model": model,
        "ema": ema,
        "model_name": model_name,
        "image_size": int(image_size),
        "mean": list(mean),
        "std": list(std),
        "config": config,
        **task_fields,
    }


@dataclass(frozen=True)
class FileKind:
    """What a loaded file holds: ``kind`` is ``model`` (a final model file), ``checkpoint`` (a run's checkpoint)
    or ``foreign`` (no in21k file: a plain state dict, e.g. the original's); ``task`` is ``None`` for foreign
    files; ``legacy`` marks a model file written before model files had a schema."""

    kind: str
    task: str | None
    legacy: bool = False


def identify(obj: Any, path: str | Path) -> FileKind:
    """Dispatch on the file's schema; only a file without one is recognised by its entries (module docstring)."""
    schema = obj.get("schema") if isinstance(obj, dict) else None
    if schema == MODEL_SCHEMA:
        task = obj.get("task")
        if task not in TASK_FIELDS:
            raise DataError(f"{path}: a {MODEL_SCHEMA} model file with an unknown task {task!r}; the file is damaged")
        return FileKind("model", task)
    if schema in CHECKPOINT_TASKS:
        return FileKind("checkpoint", CHECKPOINT_TASKS[schema])
    if isinstance(schema, str) and schema.startswith("in21k."):
        known = ", ".join([MODEL_SCHEMA, *CHECKPOINT_SCHEMAS.values()])
        raise DataError(
            f"{path} is an in21k file of schema {schema!r}, which this version of in21k cannot read (it reads "
            f"{known}): it was written by another version; upgrade in21k, or read it with the version that wrote it"
        )
    if schema is None and isinstance(obj, dict) and isinstance(obj.get("model_name"), str):
        if isinstance(obj.get("model"), dict):  # a model file from before the schema field
            return FileKind("model", SINGLE_LABEL if obj.get("task") == SINGLE_LABEL else SEMANTIC, legacy=True)
    return FileKind("foreign", None)
