"""``LoaderOptions``: how the streaming loader reads, decodes and hands over batches (torch-free).

The loader owns this section of every command that reads a prepared dataset (``in21k train``,
``finetune``, ``bench loader``, ``bench train``): ``loader:`` in YAML, ``--loader.KEY`` on the command
line, the ``options=`` (or keyword arguments) of ``create_loader``. What a trainer decides itself is
not here: the dataset (``--data``), the split, the batch size, the image size, the seed, the decode
device (``--gpu-decode``), rank and world size (torchrun).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from in21k.config import json_option, storage_options_option
from in21k.errors import ConfigError
from in21k.storage import STREAM_CLIENTS, Retry

TRANSFORMS = ("miil", "timm", "eval")
POLICIES = ("skip", "raise")


def _h(text: str, metavar: str | None = None) -> dict:
    return {"help": text, **({"metavar": metavar} if metavar else {})}


@dataclass
class LoaderOptions:
    num_workers: int = field(
        default=8, metadata=_h("loader worker processes per rank (0: read in the main process)", "N")
    )
    transform: Literal["miil", "timm", "eval"] = field(
        default="miil", metadata=_h("miil: squash + Cutout + RandAugment (the original); timm: timm's preset; eval")
    )
    corrupt: Literal["skip", "raise"] = field(
        default="skip", metadata=_h("a sample that does not decode: skip (counted, replaced in its batch) or raise")
    )
    shard_errors: Literal["skip", "raise"] = field(
        default="raise", metadata=_h("a shard that cannot be read: raise, or skip its samples (counted)")
    )
    storage_options: Any = field(
        default=None,
        metadata=_h(
            "fsspec options as JSON (default: credentials and endpoint from the environment); credentials in "
            "them are written and logged as <redacted> only",
            "JSON",
        ),
    )
    allow_pipe: bool = field(default=False, metadata=_h("allow pipe:COMMAND shard names (runs shell commands)"))
    read_client: Literal["auto", "pyarrow", "fsspec", "obstore"] = field(
        default="auto",
        metadata=_h(
            "client streaming s3:// and gs:// shards: auto (pyarrow, or fsspec for options pyarrow cannot "
            "express), pyarrow, fsspec (s3fs/gcsfs), obstore (s3:// only; needs num_workers >= 1)"
        ),
    )
    read_retries: int = field(
        default=8,
        metadata=_h(
            "retries of an object-storage read that failed transiently (reset, timeout, 5xx, server "
            "down), resuming at the byte reached; counted anew once bytes flow again; 0: none",
            "N",
        ),
    )
    read_retry_seconds: float = field(
        default=120.0, metadata=_h("give up on an outage (then shard_errors applies) after this long", "SECONDS")
    )
    read_retry_delay: float = field(
        default=0.5, metadata=_h("first wait before a retry; doubles each time, with jitter, up to 30 s", "SECONDS")
    )
    cache_dir: str | None = field(
        default=None,
        metadata=_h(
            "keep remote shards in this local folder (shared by the node's workers and ranks), so that "
            "later epochs read them from local disk",
            "DIR",
        ),
    )
    cache_limit: Any = field(
        default="50G",
        metadata=_h(
            "most bytes the shard cache holds, never exceeded (least recently used shards go first); "
            "a number, or with a K/M/G/T suffix (powers of 1000)",
            "BYTES",
        ),
    )
    interleave: int = field(default=4, metadata=_h("shards each worker reads at once, sample by sample", "N"))
    shuffle_block: int = field(default=2048, metadata=_h("samples per shuffle block (training)", "N"))
    prefetch_factor: int = field(default=2, metadata=_h("batches each worker prepares ahead", "N"))
    pin_memory: bool = field(default=False, metadata=_h("pin batches in page-locked memory (CUDA)"))
    timm_args: Any = field(
        default=None, metadata=_h("transform timm: keyword arguments of timm's create_transform, as JSON", "JSON")
    )

    def validate(self) -> None:
        self.storage_options = storage_options_option("loader.storage_options", self.storage_options)
        if self.cache_dir is not None:
            self.cache_bytes()  # a bad limit is an error now, not in a worker
        self.timm_args = json_option("loader.timm_args", self.timm_args)
        if self.transform not in TRANSFORMS:
            raise ConfigError(f"loader.transform: unknown transform {self.transform!r}; choose {', '.join(TRANSFORMS)}")
        for name in ("corrupt", "shard_errors"):
            if getattr(self, name) not in POLICIES:
                raise ConfigError(f"loader.{name} must be one of {', '.join(POLICIES)}, got {getattr(self, name)!r}")
        if self.num_workers < 0:
            raise ConfigError(f"loader.num_workers must be >= 0, got {self.num_workers}")
        if self.read_client == "obstore" and self.num_workers == 0:
            raise ConfigError(
                "loader.read_client obstore needs num_workers >= 1: its runtime does not survive a fork, so it must "
                "not be used in the process that forks the workers"
            )
        if self.read_client not in STREAM_CLIENTS:
            raise ConfigError(
                f"loader.read_client must be one of {', '.join(STREAM_CLIENTS)}, got {self.read_client!r}"
            )
        if isinstance(self.read_retries, bool) or not isinstance(self.read_retries, int) or self.read_retries < 0:
            raise ConfigError(f"loader.read_retries must be an integer >= 0, got {self.read_retries!r}")
        for name in ("read_retry_seconds", "read_retry_delay"):
            if not isinstance(getattr(self, name), (int, float)) or getattr(self, name) < 0:
                raise ConfigError(f"loader.{name} must be a number of seconds >= 0, got {getattr(self, name)!r}")
        for name in ("interleave", "shuffle_block", "prefetch_factor"):
            if getattr(self, name) < 1:
                raise ConfigError(f"loader.{name} must be >= 1, got {getattr(self, name)}")

    def cache_bytes(self) -> int:
        """``cache_limit`` in bytes."""
        return parse_bytes("loader.cache_limit", self.cache_limit)

    def retry_policy(self) -> Retry:
        """How long a broken object-storage read is retried (``read_retries``, ``read_retry_*``)."""
        return Retry(
            attempts=self.read_retries, seconds=float(self.read_retry_seconds), base_delay=float(self.read_retry_delay)
        )


def parse_bytes(name: str, value: Any) -> int:
    """A byte count given as a number or as text with a K/M/G/T suffix (powers of 1000): ``"50G"``, ``"1.5T"``."""
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a number of bytes, got {value!r}")
    if isinstance(value, (int, float)):
        count = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip().upper().removesuffix("B")
        scale = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}.get(text[-1:], 1.0)
        try:
            count = float(text[:-1] if scale != 1.0 else text) * scale
        except ValueError:
            raise ConfigError(f"{name} must be a number of bytes like 200G or 5e10, got {value!r}") from None
    else:
        raise ConfigError(f"{name} must be a number of bytes, got {value!r}")
    if count < 1:
        raise ConfigError(f"{name} must be at least 1 byte, got {value!r}")
    return int(count)
