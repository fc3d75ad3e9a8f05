"""The prepared dataset: the files ``in21k prepare`` writes and every other stage reads (docs/design.md,
"The prepared dataset"). This module is the only one that knows their names and formats:

- ``_info.json``: timm's wds-reader format (``name``, ``num_classes``, per split ``filenames``,
  ``shard_lengths``, ``num_samples``) plus our keys (``schema``, ``config``, ``tree``);
- ``tree.json`` (the semantic tree's own schema, ``in21k.semantic-tree/1``) and
  ``imagenet21k_miil_tree.pth`` (the same tree in the original's layout); ``classes.tsv``; the name of
  ``report.json`` (its content is the prepare job's: ``in21k.pipeline.report``);
- the shard, stats and manifest file names; the sample-key rule on both sides (``sample_key`` when
  writing, ``split_member`` when reading);
- how samples sit in a shard tar (``ShardTarWriter``): members of a sample together, in extension order,
  with the fixed headers of ``in21k.tarformat`` (which owns the tar format itself, reading and writing).

Readers use ``PreparedDataset.open(url, storage_options=...)`` (any URL of ``in21k.storage``); writers
(``prepare``, and every benchmark or test that fabricates a dataset) use ``DatasetWriter``.

The tar reader and writer are our own rather than webdataset's (``in21k.tarformat`` says why); both keep
webdataset's conventions exactly, and the test suite reads our shards with webdataset and reads
``webdataset.TarWriter`` shards with our loader.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from in21k import storage, tarformat
from in21k.errors import DataError

SCHEMA = "in21k.prepared/1"
INFO_FILE = "_info.json"
TREE_FILE = "tree.json"
MIIL_TREE_FILE = "imagenet21k_miil_tree.pth"
CLASSES_FILE = "classes.tsv"
REPORT_FILE = "report.json"  # prepare's totals and the dropped classes (in21k.pipeline.report writes it)
UNSHARDED_MANIFEST = "manifest/unsharded.parquet"  # manifest rows of members never read (dropped, duplicate)
SPLITS = ("train", "validation")


def shard_name(split: str, shard: int) -> str:
    return f"{split}/in21k-{split}-{shard:06d}.tar"


def stats_name(split: str, shard: int) -> str:
    return f"stats/{split}-{shard:06d}.json"


def manifest_name(split: str, shard: int) -> str:
    return f"manifest/{split}-{shard:06d}.parquet"


# ----------------------------------------------------------------------------------------- sample keys
_KEY_BAD = re.compile(r"[^A-Za-z0-9_-]")
# webdataset's grouping rule: a member's key is its name up to the first dot of the base name; the rest is
# the extension. Consecutive members with the same key form one sample.
_MEMBER_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


def sample_key(wnid: str, member: str) -> str:
    """The key a raw member is written under: its file stem with no dots, prefixed with its wnid if needed."""
    stem = posixpath.basename(member).split(".", 1)[0]
    stem = _KEY_BAD.sub("_", stem) or "x"
    return stem if stem.startswith(wnid + "_") else f"{wnid}_{stem}"


def split_member(name: str) -> tuple[str, str] | None:
    """``(key, extension)`` of a tar member name (extension lower-cased), or ``None`` if it has no extension."""
    m = _MEMBER_RE.match(name)
    return (m.group(1), m.group(2).lower()) if m else None


# ----------------------------------------------------------------------------------------- shard tars
class ShardTarWriter:
    """Streams samples into a WebDataset tar file with fixed headers (memory: one sample at a time).

    The tar is written directly from ``in21k.tarformat``'s pieces (header, data, zero padding; the end of
    archive as ``tarfile`` writes it); ``tests/pipeline/test_sources_and_plan.py`` checks the bytes against
    ``tarfile``'s own output. ``offsets[i]`` is the byte offset of sample ``i``'s first header: ``prepare``
    records them in the shard's stats file, so a reader can start at any sample with one ranged read.
    """

    def __init__(self, path: str) -> None:
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._offset = 0
        self.count = 0
        self.bytes = 0
        self.offsets: list[int] = []

    def _add(self, name: str, data: bytes) -> None:
        pad = tarformat.padding(len(data))
        self._file.write(tarformat.ustar_header(name, len(data)))
        self._file.write(data)
        if pad:
            self._file.write(pad)
        self._offset += tarformat.BLOCK + len(data) + len(pad)

    def add_sample(self, key: str, parts: Mapping[str, bytes]) -> None:
        """One sample: member ``<key>.<ext>`` per entry of ``parts``, in sorted extension order."""
        if "." in key:
            raise DataError(f"sample key {key!r} has a dot: readers would split it there")
        self.offsets.append(self._offset)
        for ext in sorted(parts):
            data = parts[ext]
            self._add(f"{key}.{ext}", data)
            self.bytes += len(data)
        self.count += 1

    def write(self, key: str, jpeg: bytes, class_index: int, meta: dict[str, Any]) -> None:
        """A prepared sample: ``.jpg`` (the image), ``.cls`` (class index as ASCII) and ``.json`` (metadata)."""
        self.add_sample(
            key,
            {
                "cls": str(class_index).encode(),
                "jpg": jpeg,
                "json": json.dumps(meta, sort_keys=True, separators=(",", ":")).encode(),
            },
        )

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.write(tarformat.end_of_archive(self._offset))
        self._file.close()

    def __enter__(self) -> ShardTarWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class Shard:
    index: int  # position in the split's filenames
    url: str
    length: int  # samples, from shard_lengths


class PreparedDataset:
    """A prepared dataset at a URL: its ``_info.json``, splits, shard lists and tree, read through ``storage``."""

    def __init__(self, url: str, info: dict[str, Any], *, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.info = info
        self.storage_options = storage_options
        self._validate()

    @classmethod
    def open(cls, url: str, *, storage_options: dict[str, Any] | None = None) -> PreparedDataset:
        """Read ``URL/_info.json``; ``storage.NotFoundError`` naming the fix when ``url`` is not a prepared dataset.

        A remote address is checked first (``storage.check_access``): a wrong endpoint or bucket, or missing or
        refused credentials, fail here within seconds, before any retry."""
        try:
            storage.check_access(storage.join(url, INFO_FILE), storage_options)
            info = storage.read_json(storage.join(url, INFO_FILE), storage_options=storage_options)
        except storage.NotFoundError:
            raise storage.NotFoundError(
                f"{storage.display(storage.join(url, INFO_FILE))} not found: {storage.display(url)!r} is not a "
                "prepared dataset (the folder or prefix that `in21k prepare --out` wrote, holding _info.json)"
            ) from None
        return cls(url, info, storage_options=storage_options)

    def _where(self) -> str:
        return storage.display(storage.join(self.url, INFO_FILE))

    def _validate(self) -> None:
        info = self.info
        splits = info.get("splits") if isinstance(info, dict) else None
        if not isinstance(splits, dict):
            raise DataError(f"{self._where()}: no 'splits' mapping; is this an in21k/timm _info.json?")
        num_classes = info.get("num_classes")
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise DataError(f"{self._where()}: 'num_classes' must be a positive integer, got {num_classes!r}")
        for split, entry in splits.items():
            names = entry.get("filenames") if isinstance(entry, dict) else None
            lengths = entry.get("shard_lengths") if isinstance(entry, dict) else None
            if not isinstance(names, list) or not isinstance(lengths, list) or len(names) != len(lengths):
                raise DataError(
                    f"{self._where()} split {split!r}: 'filenames' and 'shard_lengths' must be lists of equal length"
                )
            for i, length in enumerate(lengths):
                if not isinstance(length, int) or isinstance(length, bool) or length < 0:
                    raise DataError(f"{self._where()} split {split!r}: shard_lengths[{i}] = {length!r} is not a count")

    @property
    def name(self) -> str:
        return str(self.info.get("name", ""))

    @property
    def num_classes(self) -> int:
        return int(self.info["num_classes"])

    @property
    def splits(self) -> list[str]:
        return list(self.info["splits"])

    def _split(self, split: str) -> dict[str, Any]:
        splits = self.info["splits"]
        if split not in splits:
            have = ", ".join(sorted(splits)) or "none"
            raise DataError(f"{self._where()} has no split {split!r} (splits: {have})")
        return splits[split]

    def shards(self, split: str, *, allow_pipe: bool = False) -> list[Shard]:
        """The non-empty shards of ``split`` with their URLs (names joined onto the dataset root)."""
        entry = self._split(split)
        out = []
        for i, (name, length) in enumerate(zip(entry["filenames"], entry["shard_lengths"], strict=True)):
            url = storage.join(self.url, str(name))
            if storage.is_pipe(url) and not allow_pipe:
                raise storage.PipeNotAllowedError(
                    f"{self._where()} lists the shard {url!r}, a shell command; refusing to run it. Set "
                    "allow_pipe=True (loader.allow_pipe) only if you trust this _info.json"
                )
            if length > 0:
                out.append(Shard(i, url, int(length)))
        return out

    def num_samples(self, split: str) -> int:
        return int(sum(self._split(split)["shard_lengths"]))

    def sample_offsets(self, split: str, shard: Shard) -> list[int] | None:
        """Byte offset of each sample of ``shard`` (from its stats file, written by ``prepare``), or ``None`` when
        the dataset has none (written by another tool, or by an earlier version): then readers skip by reading."""
        if self.info.get("schema") != SCHEMA:
            return None
        try:
            stats = storage.read_json(
                storage.join(self.url, stats_name(split, shard.index)), storage_options=self.storage_options
            )
        except (storage.NotFoundError, DataError):
            return None
        offsets = stats.get("offsets") if isinstance(stats, dict) else None
        if not isinstance(offsets, list) or len(offsets) != shard.length:
            return None
        return [int(o) for o in offsets]

    def fingerprint(self) -> str:
        """A short digest of what decides the sample order: class count and every split's shard list."""
        splits = {k: [v["filenames"], v["shard_lengths"]] for k, v in sorted(self.info["splits"].items())}
        blob = json.dumps([self.num_classes, splits], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def report(self) -> dict[str, Any] | None:
        """The parsed ``report.json`` that ``prepare`` wrote next to ``_info.json``, or ``None`` without one."""
        try:
            data = storage.read_json(storage.join(self.url, REPORT_FILE), storage_options=self.storage_options)
        except storage.NotFoundError:
            return None
        return data if isinstance(data, dict) else None

    def tree_data(self) -> dict[str, Any]:
        """The parsed ``tree.json`` (for ``SemanticTree.from_dict``)."""
        url = storage.join(self.url, str(self.info.get("tree") or TREE_FILE))
        try:
            data = storage.read_json(url, storage_options=self.storage_options)
        except storage.NotFoundError:
            raise DataError(
                f"{storage.display(url)} not found: {storage.display(self.url)!r} must be a dataset written by "
                "`in21k prepare` (it writes the tree next to _info.json), or give the tree with --tree"
            ) from None
        if not isinstance(data, dict):
            raise DataError(f"{storage.display(url)}: a tree.json holds a JSON object, not {type(data).__name__}")
        return data


def is_prepared(url: str, *, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether ``url`` holds an ``_info.json`` (a prepared dataset) rather than, say, class folders."""
    try:
        storage.check_access(storage.join(url, INFO_FILE), storage_options)
    except storage.NotFoundError:
        return False
    return storage.exists(storage.join(url, INFO_FILE), storage_options=storage_options)


# ----------------------------------------------------------------------------------------- writing
class DatasetWriter:
    """The dataset-level files of a prepared dataset (shards are written with ``ShardTarWriter``)."""

    def __init__(self, target: str | storage.Store, storage_options: dict[str, Any] | None = None) -> None:
        self.store = target if isinstance(target, storage.Store) else storage.Store(target, storage_options)

    def write_info(
        self,
        *,
        num_classes: int,
        splits: Mapping[str, Iterable[tuple[str, int]]],
        config: dict[str, Any] | None = None,
        name: str = "imagenet-21k-p",
    ) -> dict[str, Any]:
        """``_info.json`` from ``(filename, samples)`` per shard of each split; returns the document."""
        out: dict[str, Any] = {}
        for split, shards in splits.items():
            shards = list(shards)
            if not shards:
                continue
            lengths = [int(n) for _, n in shards]
            out[split] = {
                "name": split,
                "filenames": [str(f) for f, _ in shards],
                "shard_lengths": lengths,
                "num_samples": sum(lengths),
            }
        info = {
            "name": name,
            "num_classes": int(num_classes),
            "splits": out,
            "schema": SCHEMA,
            "config": dict(config or {}),
            "tree": TREE_FILE,
        }
        self.store.write_json(INFO_FILE, info)
        return info

    def write_tree(self, tree: Any, *, miil: bool = True) -> None:
        """``tree.json`` (and ``imagenet21k_miil_tree.pth``) of a ``SemanticTree``."""
        self.store.write_json(TREE_FILE, tree.to_dict(), compact=True)
        if miil:
            self.store.write_bytes(MIIL_TREE_FILE, tree.to_miil_bytes())

    def write_stats(self, split: str, shard: int, stats: dict[str, Any]) -> None:
        """A shard's stats file (``prepare`` writes it last: its existence marks the shard finished); its
        ``offsets`` (``ShardTarWriter.offsets``) let readers open the shard at any sample."""
        self.store.write_json(stats_name(split, shard), stats)

    def write_classes(self, tree: Any, counts: Mapping[str, Mapping[str, int]]) -> None:
        """``classes.tsv``: index, wnid, name, level, train and validation counts (``counts[wnid][split]``)."""
        lines = ["index\twnid\tname\tlevel\ttrain_count\tval_count"]
        depths = tree.depths
        for c in tree.classes:
            n = counts.get(c.wnid, {})
            lines.append(
                f"{c.index}\t{c.wnid}\t{c.name}\t{int(depths[c.index])}\t{n.get('train', 0)}\t{n.get('validation', 0)}"
            )
        self.store.write_bytes(CLASSES_FILE, ("\n".join(lines) + "\n").encode())


def write_samples(path: str, samples: Iterable[tuple[str, Mapping[str, bytes]]]) -> list[int]:
    """Write ``(key, {ext: bytes})`` samples into a shard tar at the local ``path``; returns each sample's byte
    offset (``ShardTarWriter.offsets``: one per sample)."""
    with ShardTarWriter(path) as writer:
        for key, parts in samples:
            writer.add_sample(key, parts)
    return writer.offsets
