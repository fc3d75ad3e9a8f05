"""The options of every ``in21k bench`` command (torch-free: ``in21k --help`` imports this module)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from in21k.errors import ConfigError
from in21k.loaders.options import LoaderOptions
from in21k.pipeline.options import DEDUP_COLOR_DISTANCE, DEDUP_DISTANCE


def _h(text: str, metavar: str | None = None) -> dict:
    return {"help": text, **({"metavar": metavar} if metavar else {})}


@dataclass
class DecodeBenchConfig:
    images: int = field(default=400, metadata={"help": "distinct images in the generated corpus"})
    tail_share: float = field(default=0.05, metadata={"help": "share of large images (long side 800-4000 px)"})
    rounds: int = field(default=2, metadata={"help": "passes over the corpus per path (interleaved)"})
    seed: int = field(default=0, metadata={"help": "corpus seed"})
    fidelity: bool = field(
        default=True,
        metadata={"help": "also score the outputs against an antialiased reference and on zone plates (aliasing)"},
    )

    def validate(self) -> None:
        if self.images < 1 or self.rounds < 1:
            raise ConfigError(f"--images and --rounds must be >= 1, got {self.images} and {self.rounds}")
        if not 0.0 <= self.tail_share <= 1.0:
            raise ConfigError(f"--tail-share must be within 0..1, got {self.tail_share}")


@dataclass
class PrepareBenchConfig:
    images: int = field(default=8000, metadata={"help": "members in the generated raw release"})
    distinct: int = field(default=300, metadata={"help": "distinct images (members reuse them)"})
    classes: int = field(default=8, metadata={"help": "class tars in the raw release"})
    tail_share: float = field(default=0.05, metadata={"help": "share of large images (long side 800-4000 px)"})
    num_cpus: int | None = field(default=None, metadata={"help": "Ray CPUs, N (default: os.cpu_count())"})
    shards_per_cpu: int = field(default=4, metadata={"help": "train shards per CPU"})
    workdir: str | None = field(default=None, metadata={"help": "where to write the corpus (default: a temp dir)"})
    seed: int = field(default=0, metadata={"help": "corpus seed"})

    def validate(self) -> None:
        if self.workdir is not None and not os.path.isdir(self.workdir):
            raise ConfigError(
                f"--workdir {self.workdir}: no such folder; create it, or leave --workdir out (a temp dir)"
            )


@dataclass
class DedupBenchConfig:
    classes: int = field(default=24, metadata=_h("classes of the synthetic release", "N"))
    images: str = field(default="40:80", metadata=_h("members per class, MIN:MAX", "MIN:MAX"))
    plant: int = field(default=10, metadata=_h("planted copies per kind, inside a class and as many across", "N"))
    eval_images: int = field(default=60, metadata=_h("pictures of the evaluation set (about half planted)", "N"))
    max_distance: int = field(default=DEDUP_DISTANCE, metadata=_h("prepare's --dedup-distance", "BITS"))
    max_color_distance: float = field(
        default=DEDUP_COLOR_DISTANCE, metadata=_h("prepare's --dedup-color-distance", "LEVELS")
    )
    num_cpus: int | None = field(default=None, metadata=_h("CPUs of the local Ray (default: all)", "N"))
    workdir: str | None = field(default=None, metadata=_h("where to write the release (default: a temp dir)", "DIR"))
    seed: int = field(default=0, metadata=_h("seed of the release", "N"))

    def validate(self) -> None:
        if self.classes < 4 or self.plant < 1 or self.eval_images < 4:
            raise ConfigError("need --classes >= 4, --plant >= 1 and --eval-images >= 4")


@dataclass
class LoaderBenchConfig:
    data: str = field(
        default="", metadata={"help": "prepared dataset root (holds _info.json), local path", "metavar": "URL"}
    )
    split: str = field(default="train", metadata={"help": "split to read"})
    batch_size: int = field(default=64, metadata={"help": "batch size"})
    loader: LoaderOptions = field(
        default_factory=lambda: LoaderOptions(num_workers=os.cpu_count() or 1),
        metadata=_h("the loader under test and its peers (workers default: one per CPU core)"),
    )
    image_size: int = field(default=224, metadata={"help": "output image side"})
    max_samples: int = field(
        default=4096, metadata={"help": "use the first shards of the split up to this many samples"}
    )
    epochs: int = field(default=2, metadata={"help": "measured epochs over the subset"})
    warmup_epochs: int = field(default=1, metadata={"help": "unmeasured epochs first"})
    rounds: int = field(default=3, metadata={"help": "interleaved measuring rounds; the median is reported"})
    baselines: bool = field(default=True, metadata={"help": "also run the ImageFolder baselines and the limits"})
    peers: bool = field(
        default=True,
        metadata={
            "help": "with the baselines and --loader.transform eval, also run the installed peer loaders "
            "(webdataset, timm's wds reader, LitData)"
        },
    )
    s3: bool = field(default=False, metadata={"help": "also stream from SeaweedFS started on 127.0.0.1 (weed binary)"})
    s3_url: str | None = field(
        default=None,
        metadata={
            "help": "also stream from this s3:// copy of the same dataset (credentials and endpoint from "
            "AWS_* environment variables)",
            "metavar": "URL",
        },
    )

    def validate(self) -> None:
        if not self.data:
            raise ConfigError("--data is required: a prepared dataset root (the folder that holds _info.json)")
        if self.batch_size < 1 or self.max_samples < self.batch_size or self.epochs < 1 or self.rounds < 1:
            raise ConfigError("need batch_size >= 1, max_samples >= batch_size, epochs >= 1 and rounds >= 1")


@dataclass
class BenchTrainConfig:
    data: str | None = field(
        default=None, metadata=_h("prepared dataset for the loader-fed run (none: synthetic only)", "DST")
    )
    make_data: str | None = field(
        default=None, metadata=_h("first write a synthetic prepared dataset here (and use it)", "DIR")
    )
    make_images: int = field(default=16384, metadata=_h("--make-data: number of 224 px JPEGs (quality 95)", "N"))
    make_shards: int = field(default=64, metadata=_h("--make-data: number of shards", "N"))
    make_workers: int = field(default=0, metadata=_h("--make-data: processes (0 = all cores)", "N"))
    model: str = field(default="resnet50", metadata=_h("timm model name", "NAME"))
    batch_size: int | None = field(
        default=None, metadata=_h("batch size (default: 90%% of the maximal batch, found by search)", "B")
    )
    max_batch: int | None = field(
        default=None, metadata=_h("cap of the maximal-batch search (required on CPU: no OOM error there)", "B")
    )
    search_start: int = field(default=8, metadata=_h("first batch size of the search (then doubling)", "B"))
    steps: int | None = field(
        default=None, metadata=_h("timed training steps per run (default: 200 on CUDA, 10 on CPU)", "N")
    )
    warmup: int | None = field(
        default=None, metadata=_h("untimed steps first: autotune, allocator, loader start (default: 20; 2 on CPU)", "N")
    )
    image_size: int = field(default=224, metadata=_h("image size", "PX"))
    amp: Literal["auto", "none", "bf16", "fp16"] = field(
        default="auto", metadata=_h("autocast dtype; auto: bf16 on CUDA, none on CPU (where bf16 is emulated, slow)")
    )
    channels_last: bool = field(default=True, metadata=_h("channels_last model and input"))
    compile: bool = field(default=False, metadata=_h("torch.compile the model"))
    gpu_decode: bool = field(
        default=True, metadata=_h("loader-fed run: decode + augment on the device (else CPU workers)")
    )
    cpu_decode_too: bool = field(default=False, metadata=_h("also time the CPU-decode loader path, for reference"))
    loader: LoaderOptions = field(default_factory=LoaderOptions, metadata=_h("the loader of the loader-fed run"))
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata=_h("device"))
    tree: str = field(
        default="fall11", metadata=_h("head/loss tree when there is no DST/tree.json", "PATH|fall11|winter21")
    )
    seed: int = field(default=0, metadata=_h("seed", "N"))

    def validate(self) -> None:
        for name in ("steps", "image_size", "make_images", "make_shards", "search_start"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if (self.warmup or 0) < 0 or self.make_workers < 0:
            raise ConfigError("--warmup and --make-workers must be >= 0")
        if self.data and self.make_data:
            raise ConfigError("give --data (an existing dataset) or --make-data (write one), not both")
        for name in ("batch_size", "max_batch"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


@dataclass
class BenchInferConfig:
    model: str = field(default="resnet50", metadata=_h("timm model name", "NAME"))
    batch_size: int | None = field(
        default=None, metadata=_h("batch size (default: 90%% of the maximal inference batch, found by search)", "B")
    )
    max_batch: int | None = field(
        default=None, metadata=_h("cap of the maximal-batch search (required on CPU: no OOM error there)", "B")
    )
    search_start: int = field(default=8, metadata=_h("first batch size of the search (then doubling)", "B"))
    steps: int | None = field(default=None, metadata=_h("timed forward passes (default: 100 on CUDA, 10 on CPU)", "N"))
    warmup: int | None = field(default=None, metadata=_h("untimed forward passes first (default: 10; 2 on CPU)", "N"))
    image_size: int = field(default=224, metadata=_h("image size", "PX"))
    amp: Literal["auto", "none", "bf16", "fp16"] = field(
        default="auto", metadata=_h("autocast dtype; auto: bf16 on CUDA, none on CPU (where bf16 is emulated, slow)")
    )
    channels_last: bool = field(default=True, metadata=_h("channels_last model and input"))
    compile: bool = field(default=False, metadata=_h("torch.compile the model"))
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata=_h("device"))
    tree: str = field(default="fall11", metadata=_h("tree that sizes the head", "PATH|fall11|winter21"))
    seed: int = field(default=0, metadata=_h("seed", "N"))

    def validate(self) -> None:
        for name in ("steps", "image_size", "search_start"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if (self.warmup or 0) < 0:
            raise ConfigError("--warmup must be >= 0")
        for name in ("batch_size", "max_batch"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


@dataclass
class TarBenchConfig:
    data: str = field(default="", metadata=_h("prepared dataset root (local path)", "DST"))
    split: str = field(default="train", metadata=_h("split whose shards are read"))
    max_shards: int = field(default=16, metadata=_h("read at most this many shards", "N"))
    rounds: int = field(default=5, metadata=_h("interleaved rounds; the median is reported", "N"))

    def validate(self) -> None:
        if not self.data:
            raise ConfigError("--data is required: a prepared dataset root (the folder that holds _info.json)")
        if self.max_shards < 1 or self.rounds < 1:
            raise ConfigError("--max-shards and --rounds must be >= 1")


@dataclass
class StorageBenchConfig:
    data: str = field(default="", metadata=_h("prepared dataset root (local path) whose first shards are used", "DST"))
    split: str = field(default="train", metadata=_h("split to read"))
    clients: str = field(
        default="fsspec,pyarrow,obstore",
        metadata=_h("object-storage clients to compare, comma-separated: fsspec (s3fs), pyarrow, obstore", "LIST"),
    )
    batch_size: int = field(default=64, metadata=_h("batch size", "B"))
    image_size: int = field(default=224, metadata=_h("output image side", "PX"))
    decode: Literal["cpu", "none"] = field(default="cpu", metadata=_h("cpu: decoded images; none: the JPEG bytes"))
    loader: LoaderOptions = field(
        default_factory=lambda: LoaderOptions(num_workers=os.cpu_count() or 1),
        metadata=_h("the loader options of every contender (workers default: one per CPU core)"),
    )
    max_samples: int = field(default=4096, metadata=_h("use the first shards of the split up to N samples", "N"))
    epochs: int = field(default=1, metadata=_h("measured epochs per contender and round", "N"))
    warmup_epochs: int = field(default=1, metadata=_h("unmeasured epochs first (worker start, page cache)", "N"))
    rounds: int = field(default=5, metadata=_h("interleaved measuring rounds; the median is reported", "N"))

    def client_list(self) -> list[str]:
        return [c.strip() for c in self.clients.split(",") if c.strip()]

    def validate(self) -> None:
        from in21k.storage import STREAM_CLIENTS

        if not self.data:
            raise ConfigError("--data is required: a local prepared dataset root (the folder that holds _info.json)")
        bad = [c for c in self.client_list() if c not in STREAM_CLIENTS or c == "auto"]
        if bad or not self.client_list():
            raise ConfigError(f"--clients: unknown client(s) {bad}; choose among fsspec, pyarrow, obstore")
        if "obstore" in self.client_list() and self.loader.num_workers < 1:
            raise ConfigError("--clients obstore needs --loader.num-workers >= 1 (obstore does not survive a fork)")
        if self.batch_size < 1 or self.max_samples < self.batch_size or self.epochs < 1 or self.rounds < 1:
            raise ConfigError("need batch_size >= 1, max_samples >= batch_size, epochs >= 1 and rounds >= 1")
        if self.warmup_epochs < 0:
            raise ConfigError(f"--warmup-epochs must be >= 0, got {self.warmup_epochs}")
