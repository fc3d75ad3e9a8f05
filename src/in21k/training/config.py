"""The options of ``in21k train`` and ``in21k finetune`` (defaults = the original recipes), torch-free.

What both commands share is written once. ``RunOptions`` is a section of both configs, ``run:`` in YAML and
``--run.KEY`` on the command line, as ``loader:`` is: how the shared fit loop (``training.engine``) runs, with
the same defaults in both commands (checkpoint and log cadence, caps for smoke runs, determinism). The shared
options a user types most (``--epochs``, ``--batch-size``, ``--lr``, ``--amp``, ``--out``, ``--resume`` ...) stay
top-level flags because their defaults are each command's recipe; their help texts come from one table,
``SHARED_HELP``, through ``shared``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from in21k.errors import ConfigError
from in21k.loaders.options import LoaderOptions

LOADER_HELP = (
    "the streaming loader: workers, transform, storage options, error policies... (in21k.loaders.LoaderOptions; "
    "the trainer itself sets the dataset, split, batch size, image size, seed, decode device and rank)"
)
RUN_HELP = "how the run is driven, the same in train and finetune: checkpoint and log cadence, smoke-run caps"


def _h(text: str, metavar: str | None = None) -> dict:
    return {"help": text, **({"metavar": metavar} if metavar else {})}


SHARED_HELP: dict[str, dict] = {
    "out": _h("run directory: config, logs, metrics, checkpoints, the final model.pt (docs/training.md)", "RUN_DIR"),
    "resume": _h("auto (newest checkpoint in RUN_DIR, if any) or a checkpoint file", "auto|PATH"),
    "epochs": _h("epochs", "N"),
    "batch_size": _h("batch size per process (per GPU)", "B"),
    "lr": _h("peak learning rate"),
    "weight_decay": _h("weight decay, on parameters with ndim > 1 only"),
    "min_lr": _h("cosine schedule: final lr"),
    "label_smoothing": _h("label smoothing e: (1-e)*onehot + e/n"),
    "grad_clip": _h("clip the gradient norm to this value"),
    "ema": _h("keep an exponential moving average of the weights (also validated and saved)"),
    "ema_decay": _h("EMA decay per optimizer step"),
    "amp": _h("autocast: auto = fp16 on CUDA (the original), none on CPU"),
    "channels_last": _h("channels_last memory format for model and input"),
    "device": _h("auto = cuda:LOCAL_RANK when CUDA is available"),
    "seed": _h("seed of the random init (the model, or finetune's new head), data order and augmentation", "N"),
}


def shared(name: str, default: Any) -> Any:
    """A top-level option of both commands: this command's default, the one help text of ``SHARED_HELP``."""
    return field(default=default, metadata=SHARED_HELP[name])


@dataclass
class RunOptions:
    """The ``run:`` section (module docstring): what ``Engine.fit`` and the checkpoints need beyond the recipe."""

    save_every: int = field(
        default=1000, metadata=_h("checkpoint every N optimizer steps (and at each epoch end)", "N")
    )
    keep_last: int = field(default=3, metadata=_h("checkpoints kept", "K"))
    log_every: int = field(default=50, metadata=_h("train metrics line every N optimizer steps", "N"))
    max_steps_per_epoch: int | None = field(
        default=None, metadata=_h("cap on optimizer steps per epoch (smoke runs)", "N")
    )
    val_max_batches: int | None = field(default=None, metadata=_h("cap on validation batches per rank", "N"))
    deterministic: bool = field(default=False, metadata=_h("torch deterministic algorithms (exact resume on GPU)"))

    def validate(self) -> None:
        _check_at_least_one(self, ("save_every", "keep_last", "log_every"), flag_prefix="run.")


def _check_at_least_one(cfg: Any, names: tuple[str, ...], flag_prefix: str = "") -> None:
    for name in names:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{flag_prefix}{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")


@dataclass
class TrainConfig:
    # ---- data and model
    data: str = field(default="", metadata=_h("prepared dataset (output of in21k prepare)", "DST"))
    out: str = shared("out", "")
    tree: str | None = field(default=None, metadata=_h("semantic tree (default: DST/tree.json)", "PATH"))
    model: str = field(default="resnet50", metadata=_h("any timm model name", "NAME"))
    image_size: int = field(default=224, metadata=_h("training and validation image size (squash)", "PX"))
    init: str | None = field(
        default=None, metadata=_h("ImageNet-1K checkpoint: tensors matching by name and shape", "PATH")
    )
    resume: str | None = shared("resume", None)
    # ---- loss
    loss: Literal["semantic", "single-label"] = field(
        default="semantic", metadata=_h("semantic softmax or plain cross-entropy")
    )
    label_smoothing: float = shared("label_smoothing", 0.2)
    max_level_weight: float = field(default=20.0, metadata=_h("clamp of the semantic level weights W_k"))
    teacher: str | None = field(
        default=None,
        metadata=_h("semantic KD: teacher checkpoint (our model.pt/ckpt, or the original's state dict)", "CKPT"),
    )
    teacher_model: str | None = field(
        default=None, metadata=_h("teacher's timm architecture (required for a plain state dict)", "NAME")
    )
    kd_weight: float = field(default=1.0, metadata=_h("semantic KD: loss = semantic softmax + W * KD", "W"))
    # ---- schedule and optimiser
    epochs: int = shared("epochs", 80)
    batch_size: int = shared("batch_size", 64)
    accum_steps: int = field(default=1, metadata=_h("gradient accumulation: batches per optimizer step", "N"))
    optimizer: Literal["adam", "adamw"] = field(default="adam", metadata=_h("adam (L2 decay, the original) or adamw"))
    lr: float = shared("lr", 3e-4)
    weight_decay: float = shared("weight_decay", 1e-4)
    schedule: Literal["onecycle", "cosine", "constant"] = field(
        default="onecycle", metadata=_h("lr schedule, stepped per optimizer step")
    )
    pct_start: float = field(default=0.1, metadata=_h("onecycle: fraction of steps rising to lr"))
    div_factor: float = field(default=20.0, metadata=_h("onecycle: start lr = lr / div_factor"))
    final_div_factor: float = field(default=1e4, metadata=_h("onecycle: end lr = start lr / final_div_factor"))
    warmup_steps: int = field(default=0, metadata=_h("cosine: linear warmup steps", "N"))
    min_lr: float = shared("min_lr", 0.0)
    grad_clip: float | None = shared("grad_clip", None)
    ema: bool = shared("ema", False)
    ema_decay: float = shared("ema_decay", 0.9998)
    # ---- speed
    amp: Literal["auto", "none", "bf16", "fp16"] = shared("amp", "auto")
    channels_last: bool = shared("channels_last", False)
    compile: bool = field(default=False, metadata=_h("torch.compile the model"))
    device: Literal["auto", "cpu", "cuda"] = shared("device", "auto")
    gpu_decode: bool = field(default=False, metadata=_h("workers batch JPEG bytes; decode + augment on the device"))
    loader: LoaderOptions = field(default_factory=LoaderOptions, metadata=_h(LOADER_HELP))
    prefetch: int = field(
        default=2, metadata=_h("batches fed to the device ahead in a thread (0: off; needs workers)", "N")
    )
    # ---- run control
    seed: int = shared("seed", 0)
    run: RunOptions = field(default_factory=RunOptions, metadata=_h(RUN_HELP))
    val_batch_size: int | None = field(
        default=None, metadata=_h("validation batch size (default: 2 x batch size)", "B")
    )
    plot: bool = field(default=True, metadata=_h("write curves.png at the end"))

    def validate(self) -> None:
        if not self.data:
            raise ConfigError("--data is required: the prepared dataset directory (output of in21k prepare)")
        if not self.out:
            raise ConfigError("--out is required: the run directory")
        _check_at_least_one(self, ("epochs", "batch_size", "accum_steps", "image_size"))
        if self.kd_weight < 0:
            raise ConfigError(f"--kd-weight must be >= 0, got {self.kd_weight}")
        if self.teacher_model and not self.teacher:
            raise ConfigError("--teacher-model without --teacher: give the teacher checkpoint too")


@dataclass
class FinetuneConfig:
    """``in21k finetune``; defaults follow the original's transfer notes (Transfer_learning.md: Adam 2e-4, wd 1e-4,
    cosine with 3 warmup epochs down to 1e-8, EMA 0.995, label smoothing 0.1, squash, 50 epochs, batch 128)."""

    checkpoint: str = field(
        default="", metadata=_h("21K model: our model.pt/checkpoint, or the original's published state dict", "CKPT")
    )
    data: str = field(
        default="",
        metadata=_h("prepared shards (DST with _info.json) or class folders ROOT/{train,val}/<class>/", "DIR"),
    )
    out: str = shared("out", "")
    model: str | None = field(
        default=None, metadata=_h("timm architecture (default: the checkpoint's; required for a state dict)", "NAME")
    )
    tree: str | None = field(
        default=None,
        metadata=_h(
            "the 21K model's tree (default: the checkpoint's; required for a state dict)", "PATH|fall11|winter21"
        ),
    )
    weights: Literal["model", "ema"] = field(default="model", metadata=_h("which weights of our 21K files"))
    head_init: Literal["random", "map"] = field(
        default="random",
        metadata=_h("new head: random, or map (rows of classes whose wnid is in the 21K tree copied from its head)"),
    )
    image_size: int | None = field(default=None, metadata=_h("image size (default: the checkpoint's, else 224)", "PX"))
    epochs: int = shared("epochs", 50)
    batch_size: int = shared("batch_size", 128)
    optimizer: Literal["adam", "adamw", "sgd"] = field(default="adam", metadata=_h("adam, adamw or sgd (momentum)"))
    lr: float = shared("lr", 2e-4)
    weight_decay: float = shared("weight_decay", 1e-4)
    momentum: float = field(default=0.9, metadata=_h("sgd: Nesterov momentum"))
    warmup_epochs: float = field(default=3.0, metadata=_h("cosine schedule: linear warmup epochs", "N"))
    min_lr: float = shared("min_lr", 1e-8)
    label_smoothing: float = shared("label_smoothing", 0.1)
    ema: bool = shared("ema", True)
    ema_decay: float = shared("ema_decay", 0.995)
    grad_clip: float | None = shared("grad_clip", None)
    amp: Literal["auto", "none", "bf16", "fp16"] = shared("amp", "auto")
    channels_last: bool = shared("channels_last", False)
    loader: LoaderOptions = field(
        default_factory=LoaderOptions,
        metadata=_h(LOADER_HELP + "; class folders use num_workers and transform"),
    )
    device: Literal["auto", "cpu", "cuda"] = shared("device", "auto")
    seed: int = shared("seed", 0)
    resume: str | None = shared("resume", None)
    run: RunOptions = field(default_factory=RunOptions, metadata=_h(RUN_HELP))

    def validate(self) -> None:
        for name, what in (("checkpoint", "the 21K model"), ("data", "the dataset"), ("out", "the run directory")):
            if not getattr(self, name):
                raise ConfigError(f"--{name} is required: {what}")
        _check_at_least_one(self, ("epochs", "batch_size"))
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.warmup_epochs < 0:
            raise ConfigError("--warmup-epochs must be >= 0")


@dataclass
class ExportConfig:
    """``in21k export``: a trained 21K model as a folder in timm's hub layout (``training.hub``)."""

    checkpoint: str = field(
        default="",
        metadata=_h(
            "21K model: our model.pt or checkpoint, or the original's published state dict (then --model and --tree)",
            "CKPT",
        ),
    )
    out: str = field(
        default="", metadata=_h("folder to write: model.safetensors, config.json, tree.json, README.md", "DIR")
    )
    tree_head: bool = field(
        default=False,
        metadata=_h(
            "keep the semantic-softmax head's levels in the tree file and the card, so that in21k predict DIR "
            "answers per level (default: one softmax over all classes, as timm reads a classifier)"
        ),
    )
    model: str | None = field(
        default=None, metadata=_h("timm architecture (default: the checkpoint's; required for a state dict)", "NAME")
    )
    tree: str | None = field(
        default=None,
        metadata=_h("semantic tree (default: the checkpoint's; required for a state dict)", "PATH|fall11|winter21"),
    )
    image_size: int | None = field(default=None, metadata=_h("input size (default: the checkpoint's, else 224)", "PX"))
    weights: Literal["model", "ema"] = field(default="model", metadata=_h("which weights of our files to export"))

    def validate(self) -> None:
        for name, what in (("checkpoint", "the 21K model to export"), ("out", "the folder to write")):
            if not getattr(self, name):
                raise ConfigError(f"--{name} is required: {what}")
