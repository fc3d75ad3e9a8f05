"""``PrepareConfig``: every option of ``in21k prepare``, with its default and its check."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from in21k.config import storage_options_option
from in21k.errors import ConfigError
from in21k.redact import redact

# 64 nodes x 8 GPUs x 8 loader workers read disjoint shards; a shard count that is a multiple of this
# gives every worker the same number of shards (no worker idles at the end of an epoch).
DEFAULT_SHARD_MULTIPLE = 64 * 8 * 8
# ~1,500 samples of ~35 KB (224 px, quality 95) is ~50 MB per shard: large enough for fast sequential
# reads from object storage, and fall11's 11.8 M train images give 8,192 = 2 x 4,096 shards.
DEFAULT_SHARD_SIZE = 1500
# The duplicate check's defaults (docs/clean-data.md says why): the Hamming distance of two 64-bit DCT hashes that
# makes a candidate pair (even: every hash has 32 ones), and the colour-grid distance, in 8-bit levels, that makes
# a candidate a copy.
DEDUP_DISTANCE = 12
DEDUP_COLOR_DISTANCE = 7.0

# Options that change what is written: a rerun into the same --out must use the same values.
OUTPUT_KEYS = (
    "raw",
    "min_images",
    "val_per_class",
    "exclude_subtree",
    "resize",
    "size",
    "quality",
    "shard_size",
    "num_train_shards",
    "shard_multiple",
    "seed",
    "max_image_pixels",
    "against",
    "dedup",
    "dedup_distance",
    "dedup_color_distance",
    "duplicates_in_class",
    "duplicates_across_classes",
)
# Output options added later: in the fingerprint only where they differ from their defaults, so that a job prepared
# before they existed compares equal to the same options now.
OPTIONAL_OUTPUT_KEYS = ("classes", "resplit", "reencode_at_size", "parquet")


@dataclass
class ParquetOptions:
    """Options for parquet input (``parquet:`` in YAML, ``--parquet.KEY`` flags; in21k.pipeline.parquet_source)."""

    image_column: str | None = field(
        default=None,
        metadata={"help": "the column of image bytes or {bytes, path} structs (default: found)", "metavar": "NAME"},
    )
    label_column: str | None = field(
        default=None, metadata={"help": "the column of class indices or wnids (default: found)", "metavar": "NAME"}
    )
    label_names: str | None = field(
        default=None,
        metadata={
            "help": "the wnid of each class index: a file (line i = label i) or a timm list name such as "
            "imagenet21k_miil_w21 (default: the class names in the files' metadata, which must be wnids)",
            "metavar": "FILE|NAME",
        },
    )

    def fingerprint(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PrepareConfig:
    raw: str | None = field(
        default=None,
        metadata={
            "help": "the release: folder/prefix of class tars, fall11_whole.tar, a .tar.gz, class folders, the "
            "processed ImageNet-21K-P release (imagenet21k_train/ imagenet21k_val/ imagenet21k_small_classes/, "
            "extracted or as its .tar.gz), or parquet image files; local path or s3:// / gs:// URL",
            "metavar": "SRC",
        },
    )
    out: str | None = field(
        default=None, metadata={"help": "output folder or prefix (local or s3:// / gs://)", "metavar": "DST"}
    )
    min_images: int = field(
        default=500, metadata={"help": "keep a class only with at least this many readable-looking members"}
    )
    val_per_class: int = field(default=50, metadata={"help": "validation images per kept class"})
    exclude_subtree: list[str] = field(
        default_factory=list,
        metadata={
            "help": "drop every class under these wnids (WordNet hypernym closure), e.g. n00007846 (person)",
            "metavar": "WNID",
        },
    )
    classes: str | None = field(
        default=None,
        metadata={
            "help": "exactly these classes, in this order, are the label indices: a file of wnids (one a line) or "
            "a timm synset list by name (imagenet21k_miil: fall11's 11,221, imagenet21k_miil_w21: winter21's "
            "10,450, imagenet12k, imagenet22k, ...); a listed class is kept whatever its size (flagged in the "
            "report below --min-images), every other class is dropped",
            "metavar": "FILE|NAME",
        },
    )
    resplit: bool = field(
        default=False,
        metadata={
            "help": "for an input that comes with its own train/validation split (the processed release, parquet "
            "sets with a validation split): ignore that split and split by --val-per-class and --min-images as "
            "for the raw release (default: keep the split as given)"
        },
    )
    resize: Literal["squash", "short-edge", "none"] = field(
        default="squash",
        metadata={
            "help": "squash: size x size like the original; short-edge: shrink the short "
            "side to size; none: keep the size"
        },
    )
    size: int = field(default=224, metadata={"help": "output size in pixels (see --resize)"})
    quality: int = field(default=95, metadata={"help": "JPEG quality of the written images"})
    reencode_at_size: bool = field(
        default=False,
        metadata={
            "help": "re-encode images that are already at the output size too (default: such a JPEG that decodes "
            "cleanly is written byte for byte, without a second JPEG generation)"
        },
    )
    shard_size: int = field(default=DEFAULT_SHARD_SIZE, metadata={"help": "target samples per shard"})
    num_train_shards: int | None = field(
        default=None,
        metadata={"help": "exact number of train shards (default: from --shard-size and --shard-multiple)"},
    )
    shard_multiple: int = field(
        default=DEFAULT_SHARD_MULTIPLE,
        metadata={
            "help": "round the train shard count up to a multiple of this (loader workers of the whole "
            "cluster) when shards stay at least half of --shard-size"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of the validation split and the shard permutation"})
    against: list[str] = field(
        default_factory=list,
        metadata={
            "help": "evaluation sets to keep out of the release: NAME=URL, URL a folder, .tar or .parquet of images "
            "(local, s3://, gs://), e.g. imagenet1k-val=/data/imagenet/val; repeatable. Every release image that "
            "matches one of their pictures is removed from train and validation (docs/clean-data.md)",
            "metavar": "NAME=URL",
        },
    )
    dedup: bool = field(
        default=True,
        metadata={"help": "find exact and near copies inside the release and apply the --duplicates-* policies"},
    )
    dedup_distance: int = field(
        default=DEDUP_DISTANCE,
        metadata={
            "help": "a pair is a candidate copy when the Hamming distance of its 64-bit DCT hashes is at most "
            "this (even: every hash has 32 ones)"
        },
    )
    dedup_color_distance: float = field(
        default=DEDUP_COLOR_DISTANCE,
        metadata={
            "help": "and a copy when its 4x4 colour grids also differ by at most this (mean, 8-bit levels, "
            "brightness and colour cast removed)"
        },
    )
    duplicates_in_class: Literal["keep-one", "keep-all"] = field(
        default="keep-one", metadata={"help": "copies of one picture inside a class: keep one, or keep all"}
    )
    duplicates_across_classes: Literal["drop-all", "keep-one", "keep-all"] = field(
        default="drop-all",
        metadata={
            "help": "a picture filed under several classes: drop every copy (its labels contradict), keep the copy "
            "in the most specific class, or keep them all"
        },
    )
    ray_address: str | None = field(
        default=None,
        metadata={
            "help": "Ray cluster address (e.g. auto, ray://head:10001); default: RAY_ADDRESS if set (as in a job "
            "that `ray job submit` runs), else a local Ray (with a fresh auth token of its own). A cluster with token "
            "authentication needs its token in RAY_AUTH_TOKEN_PATH (a file) or RAY_AUTH_TOKEN (docs/security.md)"
        },
    )
    num_cpus: int | None = field(default=None, metadata={"help": "CPUs for a local Ray (default: all)"})
    staging: str | None = field(
        default=None,
        metadata={
            "help": "where a .tar.gz release is streamed into class tars (default: DST/_staging)",
            "metavar": "PATH",
        },
    )
    max_image_pixels: int = field(
        default=89_478_485, metadata={"help": "reject images with more pixels than this (decompression bombs)"}
    )
    max_retries: int = field(
        default=3,
        metadata={"help": "Ray's retries of a task whose worker process or node was lost (a shard is the unit)"},
    )
    retries: int = field(
        default=10,
        metadata={
            "help": "retries of a task that failed on a transient storage error (connection refused or reset, "
            "timeout, HTTP 5xx, throttling), each after an exponential backoff (1 s doubling, at most 60 s)"
        },
    )
    retry_seconds: float = field(
        default=300.0,
        metadata={"help": "a task's retries after a storage error stop this many seconds after its first failure"},
    )
    storage_options: Any = field(
        default=None,
        metadata={
            "help": "fsspec storage options as JSON, e.g. '{\"endpoint_url\": ...}' "
            "(default: credentials and endpoint from the environment); credentials in them are written and logged "
            "as <redacted> only",
            "metavar": "JSON",
        },
    )
    parquet: ParquetOptions = field(default_factory=ParquetOptions, metadata={"help": "parquet image sets as input"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    plan_only: bool = field(
        default=False,
        metadata={
            "help": "index and plan, print what would be kept, dropped, read and written (classes by reason, "
            "members by status, samples and shards per split, bytes to read), and stop: no shard and no dataset "
            "file is written, only DST/_work/ (the cached index and plan.json)"
        },
    )

    def validate(self) -> None:
        if not self.raw:
            raise ConfigError("--raw is required: the raw release to prepare (folder, archive or URL)")
        if not self.out:
            raise ConfigError("--out is required: where the prepared dataset goes")
        self.storage_options = storage_options_option("--storage-options", self.storage_options)
        for name, low in (
            ("min_images", 1),
            ("size", 8),
            ("shard_size", 1),
            ("shard_multiple", 1),
            ("max_image_pixels", 1),
        ):
            if getattr(self, name) < low:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least {low}")
        if self.val_per_class < 0:
            raise ConfigError("--val-per-class must be >= 0")
        if self.val_per_class >= self.min_images:
            raise ConfigError(
                f"--val-per-class ({self.val_per_class}) must be smaller than --min-images "
                f"({self.min_images}), or kept classes could have no train images"
            )
        if not 1 <= self.quality <= 100:
            raise ConfigError("--quality must be within 1..100")
        if self.num_train_shards is not None and self.num_train_shards < 1:
            raise ConfigError("--num-train-shards must be at least 1")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ConfigError("--num-cpus must be at least 1")
        if self.max_retries < 0:
            raise ConfigError("--max-retries must be >= 0")
        if self.retries < 0 or self.retry_seconds < 0:
            raise ConfigError("--retries and --retry-seconds must be >= 0 (0: fail at the first storage error)")
        if self.against:  # (the module reads images: not imported for a job without evaluation sets)
            from in21k.pipeline.against import parse_specs

            parse_specs(self.against)
        if not 0 <= self.dedup_distance <= 32:
            raise ConfigError("--dedup-distance must be within 0..32 (bits of a 64-bit hash)")
        if self.dedup_color_distance < 0:
            raise ConfigError("--dedup-color-distance must be >= 0")
        bad = [w for w in self.exclude_subtree if len(w) != 9 or w[0] != "n" or not w[1:].isdigit()]
        if bad:
            raise ConfigError(f"--exclude-subtree takes wnids like n00007846; not wnids: {', '.join(bad)}")
        if self.classes is not None and self.exclude_subtree:
            raise ConfigError(
                "--classes and --exclude-subtree both choose the classes: give one (remove the excluded classes "
                "from the class list instead)"
            )

    def output_fingerprint(self) -> dict[str, Any]:
        """The options that decide the output bytes (a resumed run must match them), as written into ``_info.json``
        and ``_work/job.json``: redacted, so a password inside the ``--raw`` URL is neither written nor compared."""
        out = {}
        for key in OUTPUT_KEYS:
            value = getattr(self, key)
            out[key] = list(value) if isinstance(value, (list, tuple)) else value
        defaults = PrepareConfig()
        for key in OPTIONAL_OUTPUT_KEYS:
            value, default = getattr(self, key), getattr(defaults, key)
            if value != default:
                out[key] = value.fingerprint() if key == "parquet" else value
        return redact(out)


@dataclass
class AuditConfig:
    """The options of ``in21k audit``."""

    data: str | None = field(
        default=None,
        metadata={
            "help": "the dataset: one `in21k prepare` wrote, or any WebDataset (its _info.json, or every .tar "
            "below it)",
            "metavar": "DST",
        },
    )
    against: list[str] = field(
        default_factory=list,
        metadata={
            "help": "evaluation sets NAME=URL (a folder, .tar or .parquet of images; local, s3://, gs://); repeatable",
            "metavar": "NAME=URL",
        },
    )
    dedup_distance: int = field(
        default=DEDUP_DISTANCE, metadata={"help": "as prepare's: hash distance of a candidate pair"}
    )
    dedup_color_distance: float = field(
        default=DEDUP_COLOR_DISTANCE, metadata={"help": "as prepare's: colour distance of a match"}
    )
    resize: Literal["squash", "short-edge", "none"] = field(
        default="squash",
        metadata={
            "help": "how images are resized before fingerprinting, for a dataset not written by prepare "
            "(prepare's own datasets use their _info.json config)"
        },
    )
    size: int = field(default=224, metadata={"help": "the size of --resize"})
    workers: int | None = field(default=None, metadata={"help": "processes that decode images (default: all CPUs)"})
    storage_options: Any = field(
        default=None,
        metadata={"help": "fsspec storage options as JSON (default: from the environment)", "metavar": "JSON"},
    )
    progress: bool = field(default=True, metadata={"help": "show progress bars"})
    json: bool = field(default=False, metadata={"help": "print one JSON object only"})

    def validate(self) -> None:
        from in21k.pipeline.against import parse_specs

        if not self.data:
            raise ConfigError("--data is required: the dataset to audit (a folder or prefix of shards)")
        if not self.against:
            raise ConfigError("--against is required: NAME=URL of at least one evaluation set")
        parse_specs(self.against)
        self.storage_options = storage_options_option("--storage-options", self.storage_options)
        if not 0 <= self.dedup_distance <= 32 or self.dedup_color_distance < 0 or self.size < 8:
            raise ConfigError("need 0 <= --dedup-distance <= 32, --dedup-color-distance >= 0 and --size >= 8")
        if self.workers is not None and self.workers < 1:
            raise ConfigError("--workers must be at least 1")
