"""Evaluation sets (``--against NAME=URL``): where their images are, reading them, fingerprinting them once.

An evaluation set is the test set a user will report accuracy on (ImageNet-1K validation, CIFAR, Pets, ...); the
release's images that match one of its pictures are removed (``in21k.pipeline.clean``) or reported
(``in21k audit``). ``URL`` (local, ``s3://``, ``gs://``) is one of:

- a folder: every file below it with an image extension (``.jpg``, ``.jpeg``, ``.png``, ``.webp``, ...); a
  member is named by its path below the folder (``n01440764/ILSVRC2012_val_00000293.JPEG``);
- a ``.tar``: every regular member with an image extension, by its file name (read by byte range);
- a ``.parquet`` file, or a folder of them: one image per row, from a column holding a struct with ``bytes`` (the
  Hugging Face ``Image`` feature; its ``path`` names the member) or else the first binary column; members are
  named by a ``__key__``/``key``/``file_name``/``path``/``id`` column if there is one, else ``row-N``.

``EvalSet.open`` lists it (an error naming the set when it is missing or holds no image: before any work
starts); ``chunks`` cuts the list into tasks; ``fingerprint_chunk`` reads and fingerprints one (a picture that
does not decode is counted with its reason, never fatal). The job caches the result as
``DST/_work/against/NAME.parquet`` (``EVAL_COLUMNS``) with ``NAME.json`` (the URL, the listing's digest and the
image settings) and reuses it on a rerun while those are the same.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from in21k.errors import ConfigError, DataError
from in21k.pipeline.fingerprint import exact_hash, fingerprints
from in21k.pipeline.imaging import ResizeMode, process_image
from in21k.storage import RangeReader, Retry, filesystem, full_url, is_transient, locate

AGAINST_DIR = "_work/against"
EVAL_SCHEMA = "in21k.eval-set/1"
EVAL_COLUMNS = (
    ("member", "string"),
    ("phash", "uint64"),
    ("colors", "binary"),
    ("pixel_hash", "uint64"),
    ("error", "string"),
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CHUNK = 256  # images per fingerprinting task
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_NAME_COLUMNS = ("__key__", "key", "file_name", "filename", "path", "name", "id", "image_id")
_BYTES_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "webp", "bytes", "image_bytes", "content")


def parse_specs(specs: list[str]) -> list[tuple[str, str]]:
    """``NAME=URL`` strings -> ``(name, url)``; a ``ConfigError`` that says what is wrong."""
    out: list[tuple[str, str]] = []
    for spec in specs:
        name, sep, url = spec.partition("=")
        if not sep or not url:
            raise ConfigError(f"--against {spec!r}: give NAME=URL, e.g. imagenet1k-val=/data/imagenet/val")
        if not _NAME.match(name):
            raise ConfigError(f"--against {spec!r}: the name must be letters, digits, '_', '.' or '-'")
        if name in {n for n, _ in out}:
            raise ConfigError(f"--against: the name {name!r} is given twice")
        out.append((name, url))
    return out


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


@dataclass
class EvalSet:
    """One evaluation set and its images: ``members`` are ``(name, locator)``; the locator is ``(url, offset,
    size)`` for files and tar members, ``(url, row_group, row)`` for parquet rows."""

    name: str
    url: str
    kind: str  # folder | tar | parquet
    members: list[tuple[str, tuple]] = field(default_factory=list)

    @property
    def digest(self) -> str:
        """Of the listing: names and locators (a changed set is fingerprinted again)."""
        h = hashlib.sha256()
        for name, loc in self.members:
            h.update(repr((name, loc)).encode())
        return h.hexdigest()[:16]

    @classmethod
    def open(cls, name: str, url: str, storage_options: dict[str, Any] | None = None) -> EvalSet:
        """List the set; a ``DataError`` (missing, empty) or ``StorageError`` (unreachable) naming it otherwise."""
        where = f"--against {name}={url}"
        fs, path, kind = locate(url, storage_options=storage_options, what=where)
        is_file = kind == "file"
        if kind == "missing":
            raise DataError(f"{where}: no such file or folder; give a folder, .tar or .parquet of images")
        lower = path.lower()
        if is_file and lower.endswith(".tar"):
            es = cls(name, url, "tar", _tar_members(fs, path, url, storage_options))
        elif is_file and lower.endswith(".parquet"):
            es = cls(name, url, "parquet", _parquet_members(fs, [path]))
        elif is_file:
            raise DataError(f"{where}: a file, but not a .tar or .parquet; give a folder, .tar or .parquet of images")
        else:
            found = fs.find(path, detail=True)
            files = sorted(
                (p, int(info.get("size") or 0)) for p, info in found.items() if info.get("type", "file") == "file"
            )
            parquets = [p for p, _ in files if p.lower().endswith(".parquet")]
            if parquets and not any(_is_image(p) for p, _ in files):
                es = cls(name, url, "parquet", _parquet_members(fs, parquets))
            else:
                root = path.rstrip("/") + "/"
                images = [(p[len(root) :], (full_url(fs, p), 0, size)) for p, size in files if _is_image(p)]
                es = cls(name, url, "folder", images)
        if not es.members:
            raise DataError(f"{where}: holds no images ({', '.join(IMAGE_SUFFIXES[:5])}, ...); check the URL")
        return es

    def chunks(self, size: int = CHUNK) -> list[list[tuple[str, tuple]]]:
        return [self.members[a : a + size] for a in range(0, len(self.members), size)]


def _tar_members(fs: Any, path: str, url: str, storage_options: dict[str, Any] | None) -> list[tuple[str, tuple]]:
    from in21k.pipeline.sources import Container, index_container

    rows = index_container(Container("", "tar", full_url(fs, path)), storage_options)
    if rows["error"]:  # a set cut short would leave its later pictures unchecked: never silently
        raise DataError(
            f"--against {url}: not a readable tar after {len(rows['member']):,} members ({rows['error']}); "
            "download or write it again"
        )
    return [
        (member, (full_url(fs, path), int(offset), int(size)))
        for member, offset, size in zip(rows["member"], rows["offset"], rows["size"], strict=True)
        if _is_image(member)
    ]


def _parquet_members(fs: Any, paths: list[str]) -> list[tuple[str, tuple]]:
    import pyarrow.parquet as pq

    out = []
    for path in paths:
        with fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
        url = full_url(fs, path)
        base = posixpath.basename(path)
        for g in range(meta.num_row_groups):
            for r in range(meta.row_group(g).num_rows):
                out.append((f"{base}:{g}:{r}", (url, g, r)))
    return out


def _image_column(table: Any) -> tuple[Any, Any]:
    """``(bytes column, name column or None)`` of a parquet row group."""
    import pyarrow as pa

    for col in table.column_names:
        t = table.schema.field(col).type
        if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0:
            arr = table.column(col).combine_chunks()
            names = arr.field("path") if t.get_field_index("path") >= 0 else None
            return arr.field("bytes"), names
    binary = [
        c
        for c in table.column_names
        if pa.types.is_binary(table.schema.field(c).type) or pa.types.is_large_binary(table.schema.field(c).type)
    ]
    if not binary:
        raise DataError("a parquet evaluation set needs a binary column of image bytes (or an Image struct)")
    pick = next((c for c in _BYTES_COLUMNS if c in binary), binary[0])
    name = next((c for c in _NAME_COLUMNS if c in table.column_names), None)
    return table.column(pick).combine_chunks(), table.column(name).combine_chunks() if name else None


def read_chunk(
    chunk: list[tuple[str, tuple]], kind: str, storage_options: dict[str, Any] | None
) -> list[tuple[str, bytes | Exception]]:
    """The bytes of each member of ``chunk`` (an ``Exception`` where a file could not be read); members of a
    parquet set get their name from the file's name column when it has one."""
    if kind == "parquet":
        import pyarrow.parquet as pq

        out: list[tuple[str, bytes | Exception]] = []
        groups: dict[tuple[str, int], list[tuple[int, str]]] = {}
        for name, (url, g, r) in chunk:
            groups.setdefault((url, g), []).append((r, name))
        for (url, g), wanted in groups.items():
            fs, path = filesystem(url, storage_options)
            with fs.open(path, "rb") as f:
                table = pq.ParquetFile(f).read_row_group(g)
            data, names = _image_column(table)
            for r, name in wanted:
                label = str(names[r].as_py()) if names is not None and names[r].is_valid else f"row-{g}-{r}"
                value = data[r].as_py() if data[r].is_valid else None
                out.append((label if names is not None else name, value or b""))
        return out
    reader = RangeReader(storage_options, retry=Retry(attempts=3, seconds=15.0))
    got = reader.fetch([loc for _, loc in chunk])
    for (_, loc), data in zip(chunk, got, strict=True):
        if isinstance(data, Exception) and is_transient(data):
            raise OSError(f"reading {loc[0]}: {type(data).__name__}: {data}") from data  # retried by the job
    return [(name, data) for (name, _), data in zip(chunk, got, strict=True)]


@dataclass
class ImageSettings:
    """How evaluation images are turned into the pixels that are fingerprinted: as ``prepare`` writes its own."""

    resize: ResizeMode = "squash"
    size: int = 224
    quality: int = 95
    max_image_pixels: int = 89_478_485

    def as_dict(self) -> dict[str, Any]:
        return {
            "resize": self.resize,
            "size": self.size,
            "quality": self.quality,
            "max_image_pixels": self.max_image_pixels,
        }


def fingerprint_images(items: list[tuple[str, bytes | Exception]], settings: ImageSettings) -> dict[str, list]:
    """Columns ``EVAL_COLUMNS`` of the images ``items``: fingerprints, or an ``error`` for those that do not decode."""
    cols: dict[str, list] = {name: [] for name, _ in EVAL_COLUMNS}
    thumbs: list[bytes] = []
    at: list[int] = []
    for name, data in items:
        cols["member"].append(name)
        if isinstance(data, Exception):
            cols["error"].append(f"unreadable: {type(data).__name__}: {data}"[:200])
            cols["pixel_hash"].append(None)
            continue
        result = process_image(
            data,
            resize=settings.resize,
            size=settings.size,
            quality=settings.quality,
            max_image_pixels=settings.max_image_pixels,
            fingerprint=True,
        )
        if not result.ok:
            cols["error"].append(result.reason)
            cols["pixel_hash"].append(None)
            continue
        cols["error"].append(None)
        cols["pixel_hash"].append(exact_hash(result.jpeg))
        at.append(len(cols["member"]) - 1)
        thumbs.append(result.thumbnail)
    phash, colors = fingerprints(thumbs)
    cols["phash"] = [None] * len(cols["member"])
    cols["colors"] = [None] * len(cols["member"])
    for k, h, c in zip(at, phash.tolist(), colors, strict=True):
        cols["phash"][k] = h
        cols["colors"][k] = c.tobytes()
    return cols


def fingerprint_chunk(
    chunk: list[tuple[str, tuple]], kind: str, settings: ImageSettings, storage_options: dict[str, Any] | None
) -> bytes:
    """One task's part of an evaluation set: read, fingerprint, and return it as parquet bytes."""
    return eval_parquet(fingerprint_images(read_chunk(chunk, kind, storage_options), settings))


def eval_schema() -> Any:
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, kind)()) for name, kind in EVAL_COLUMNS])


def eval_parquet(cols: dict[str, list]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table(cols, schema=eval_schema()), buf, compression="zstd")
    return buf.getvalue()


def cache_names(name: str) -> tuple[str, str]:
    """The cached fingerprints of set ``name`` and their description, under the output."""
    return f"{AGAINST_DIR}/{name}.parquet", f"{AGAINST_DIR}/{name}.json"


def describe(es: EvalSet, settings: ImageSettings, table: Any) -> dict[str, Any]:
    """What ``NAME.json`` holds: enough to tell whether the cache is of this set, listed and read the same way."""
    import pyarrow.compute as pc

    errors = table.column("error")
    return {
        "schema": EVAL_SCHEMA,
        "name": es.name,
        "url": es.url,
        "kind": es.kind,
        "listing": es.digest,
        "settings": settings.as_dict(),
        "images": table.num_rows,
        "unreadable": int(pc.sum(errors.is_valid()).as_py() or 0),
    }


def cache_matches(meta: dict[str, Any], es: EvalSet, settings: ImageSettings) -> bool:
    return (meta.get("schema"), meta.get("url"), meta.get("listing"), meta.get("settings")) == (
        EVAL_SCHEMA,
        es.url,
        es.digest,
        settings.as_dict(),
    )
