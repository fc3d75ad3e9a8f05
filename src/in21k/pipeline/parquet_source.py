"""Parquet image sets as input: the layout image datasets have on model hubs.

A folder or prefix of parquet files (``ROOT/*.parquet``, ``ROOT/data/<split>-NNNNN-of-NNNNN.parquet``,
``ROOT/<split>/*.parquet``, or one file), each row an image and its label:

- the **image column** holds the encoded image, as plain bytes or as the common ``{"bytes": ..., "path": ...}``
  struct (the hub's ``Image`` feature; ``path`` then names the member). JPEG, PNG, WebP, ...: whatever Pillow
  decodes. Found by ``--parquet.image-column``, else the column the metadata calls an ``Image``, else a column
  named like one (``image``, ``img``, ``jpg``, ``webp``, ...) with bytes in it, else the only such column;
- the **label column** holds a class index or a wnid. Found by ``--parquet.label-column``, else the metadata's
  ``ClassLabel`` column, else ``label``/``labels``/``cls``/``class``/``target``/``wnid``/``synset``;
- an index is mapped to its wnid by ``--parquet.label-names`` (a file of wnids or a timm list name, such as
  ``imagenet21k_miil_w21``: line ``i`` is label ``i``), else by the class names the files carry (the hub's
  ``huggingface`` schema metadata, or the ``dataset_info`` of the ``README.md`` next to them), which must then
  be wnids. A row with no label (null, or -1 as hubs write for unlabelled test sets) gets the class
  ``UNLABELLED`` and is accounted for as ``dropped_class: unlabelled``.

The split is the files' own, from their path (``train``, ``validation``/``valid``/``val``, ``test``): the plan
keeps a given train/validation split (``in21k.pipeline.plan``), and rows of a test split are never read.

Parquet data cannot be read one image at a time by byte range (images sit inside compressed column pages), so
each file is converted once, by one Ray task of the index step, into a plain tar at
``--staging``/``STAGED_DIR``/<split>/<file>.tar while its rows are indexed: one sequential read of the file, and
the shard tasks then read members by byte range from those tars as from any class tar. The staged tars hold the
image bytes as they are (about the size of the parquet files).
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from in21k import tarformat
from in21k.errors import DataError
from in21k.pipeline.options import ParquetOptions
from in21k.pipeline.plan import GIVEN_NONE, GIVEN_OTHER, GIVEN_TRAIN, GIVEN_VALIDATION, UNLABELLED
from in21k.storage import Store, filesystem, full_url

STAGED_DIR = "parquet"  # under --staging: parquet/<split>/<file>.tar
IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "webp", "image_bytes", "bytes")
LABEL_COLUMNS = ("label", "labels", "cls", "class", "target", "wnid", "synset")
SPLITS = {"train": GIVEN_TRAIN, "validation": GIVEN_VALIDATION, "test": GIVEN_OTHER, "unsplit": GIVEN_NONE}
_SPLIT_WORDS = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "test": "test",
    "testing": "test",
}
_SPLIT_RE = re.compile(r"(?:^|[_.-])(" + "|".join(_SPLIT_WORDS) + r")(?=[_.-]|$)")
_WNID = re.compile(r"^n\d{8}$")
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
BATCH_ROWS = 256  # rows read at a time: memory is bounded by this many images
_MAGIC = ((b"\xff\xd8", "jpg"), (b"\x89PNG", "png"), (b"GIF8", "gif"), (b"BM", "bmp"))


@dataclass(frozen=True)
class ParquetSpec:
    """How to read the rows of every file of one set (found once, on the driver, by ``inspect``)."""

    image_column: str
    struct: bool  # {bytes, path} structs rather than plain bytes
    label_column: str
    names: tuple[str, ...] | None  # wnid of each label index; None: the labels are wnids
    names_from: str  # where the names came from, for messages and the report


@dataclass(frozen=True)
class ParquetTask:
    """One file's conversion: the set's spec, and where its staged tar goes (``rel`` under ``staging``)."""

    spec: ParquetSpec
    staging: str
    rel: str


def split_of(relpath: str) -> str:
    """The split a file's path gives (file name first, then its folders, deepest first), or ``unsplit``."""
    parts = relpath.split("/")
    parts[-1] = parts[-1].rsplit(".", 1)[0]
    for part in reversed(parts):
        m = _SPLIT_RE.search(part.lower())
        if m:
            return _SPLIT_WORDS[m.group(1)]
    return "unsplit"


def looks_like_parquet(fs: Any, path: str, names: list[str]) -> bool:
    """Whether a folder holds a parquet set: parquet files at its top, or in ``data/`` or split folders."""
    if any(n.endswith(".parquet") for n in names):
        return True
    for n in names:
        if n == "data" or n.lower() in _SPLIT_WORDS:
            sub = posixpath.join(path, n)
            if fs.isdir(sub) and any(p.endswith(".parquet") for p in fs.ls(sub, detail=False)):
                return True
    return False


def find_files(fs: Any, path: str) -> list[str]:
    if fs.isfile(path):
        return [path]
    return sorted(p for p in fs.find(path) if p.endswith(".parquet"))


def _image_like(kind: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return True
    if pa.types.is_struct(kind):
        idx = kind.get_field_index("bytes")
        return idx >= 0 and (pa.types.is_binary(kind.field(idx).type) or pa.types.is_large_binary(kind.field(idx).type))
    return False


def _features(schema: Any, readme: str | None) -> dict[str, Any]:
    """The hub's feature descriptions: from the ``huggingface`` schema metadata, else a README's front matter."""
    meta = schema.metadata or {}
    if b"huggingface" in meta:
        try:
            doc = json.loads(meta[b"huggingface"])
            features = (doc.get("info") or {}).get("features") or doc.get("features") or {}
            if isinstance(features, dict):
                return features
        except (json.JSONDecodeError, AttributeError):
            pass
    if readme and readme.startswith("---"):
        import yaml

        try:
            front = yaml.safe_load(readme.split("---", 2)[1]) or {}
        except yaml.YAMLError:
            return {}
        info = front.get("dataset_info") if isinstance(front, dict) else None
        if isinstance(info, list):  # one entry per config: the first
            info = info[0] if info else None
        out = {}
        for feature in (info or {}).get("features") or []:
            dtype = feature.get("dtype") if isinstance(feature, dict) else None
            if isinstance(dtype, dict) and isinstance(dtype.get("class_label"), dict):
                names = dtype["class_label"].get("names") or {}
                ordered = [names[k] for k in sorted(names, key=int)] if isinstance(names, dict) else list(names)
                out[feature["name"]] = {"_type": "ClassLabel", "names": ordered}
            elif dtype == "image":
                out[feature["name"]] = {"_type": "Image"}
        return out
    return {}


def inspect(
    url: str, files: list[str], fs: Any, options: ParquetOptions, storage_options: dict[str, Any] | None = None
) -> ParquetSpec:
    """Find the image and label columns and the class names of a parquet set (reads one file's footer), or a
    ``DataError`` that names what was found and the option that fixes it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from in21k.tree.classlists import load_class_list

    with fs.open(files[0], "rb") as f:
        schema = pq.read_schema(f)
    readme = None
    root = files[0] if len(files) == 1 else posixpath.commonpath(files)
    for folder in (posixpath.dirname(root), posixpath.dirname(posixpath.dirname(root))):
        candidate = posixpath.join(folder, "README.md")
        if fs.isfile(candidate):
            readme = fs.cat_file(candidate).decode(errors="replace")
            break
    features = _features(schema, readme)
    types = {name: schema.field(name).type for name in schema.names}
    found = ", ".join(f"{n} ({t})" for n, t in types.items())
    where = full_url(fs, files[0])

    image = options.image_column
    if image is not None and (image not in types or not _image_like(types[image])):
        raise DataError(
            f"{where}: --parquet.image-column {image!r} is not a column of image bytes or of "
            f"{{bytes, path}} structs; columns found: {found}"
        )
    if image is None:
        candidates = [n for n, t in types.items() if _image_like(t)]
        hub = [n for n in candidates if (features.get(n) or {}).get("_type") == "Image"]
        named = [n for n in candidates if n.lower() in IMAGE_COLUMNS]
        image = (hub or named or (candidates if len(candidates) == 1 else [None]))[0]
    if image is None:
        raise DataError(
            f"{where} has no image column (bytes, or {{bytes, path}} structs); columns found: {found}. "
            "Give --parquet.image-column NAME"
        )

    label = options.label_column
    if label is None:
        hub = [n for n in types if (features.get(n) or {}).get("_type") == "ClassLabel"]
        named = [n for n in types if n.lower() in LABEL_COLUMNS]
        label = (hub or named or [None])[0]
    if label is None or label not in types:
        raise DataError(
            f"{where} has no label column{'' if label is None else f' {label!r}'}; columns found: "
            f"{found}. Give --parquet.label-column NAME (class indices or wnids)"
        )
    kind = types[label]
    if not (pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(f"{where}: label column {label!r} is {kind}, not class indices (integers) or wnids (strings)")

    names: tuple[str, ...] | None = None
    names_from = f"wnids in column {label!r}"
    if pa.types.is_integer(kind):
        if options.label_names:
            listed = load_class_list(options.label_names, storage_options=storage_options)
            names, names_from = listed.wnids, f"--parquet.label-names {listed.origin}"
        else:
            feature = features.get(label) or {}
            if feature.get("_type") != "ClassLabel" or not feature.get("names"):
                raise DataError(
                    f"{where}: the labels are class indices but the files carry no class names; give "
                    "--parquet.label-names FILE|NAME (the wnid of label i on line i, or a timm list "
                    "name such as imagenet21k_miil_w21)"
                )
            names = tuple(str(n) for n in feature["names"])
            names_from = f"the class names in the metadata of {where}"
            bad = [n for n in names if not _WNID.match(n)]
            if bad:
                raise DataError(
                    f"{where}: the class names in its metadata are not wnids (e.g. {bad[0]!r}, "
                    f"{len(bad):,} of them); give --parquet.label-names FILE|NAME with the wnid of each "
                    "label index (line i = label i), e.g. a timm list name such as imagenet21k_miil_w21"
                )
    return ParquetSpec(image, pa.types.is_struct(types[image]), label, names, names_from)


def tasks(url: str, fs: Any, path: str, files: list[str], spec: ParquetSpec, staging: str) -> list[Any]:
    """One container per file: the file to read and the staged tar to write."""
    from in21k.pipeline.sources import Container

    base = path if fs.isdir(path) else posixpath.dirname(path)
    out = []
    for f in files:
        rel = posixpath.relpath(f, base)
        safe = _SAFE.sub("_", rel[: -len(".parquet")].replace("/", "__"))
        task = ParquetTask(spec, staging, f"{STAGED_DIR}/{split_of(rel)}/{safe}.tar")
        out.append(Container("", "parquet", full_url(fs, f), spec=task))
    return out


def _extension(data: bytes) -> str:
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "bin"


def stage_file(container: Any, storage_options: dict[str, Any] | None = None) -> dict[str, list]:
    """Convert one parquet file into its staged tar and return its index rows (``INDEX_COLUMNS`` and ``error``).

    Every row becomes a member (an empty one where the image is null), so every row is accounted for. A label
    out of the names' range, or a label string that is no wnid, is bad input for the whole set: ``DataError``.
    """
    import pyarrow.parquet as pq

    from in21k.pipeline.sources import INDEX_COLUMNS

    task: ParquetTask = container.spec
    spec = task.spec
    rows: dict[str, list] = {k: [] for k in INDEX_COLUMNS}
    store = Store(task.staging, storage_options)
    staged = store.url_of(task.rel)
    stem = posixpath.basename(task.rel)[: -len(".tar")]
    tmp = store.temp_file(task.rel)
    fs, path = filesystem(container.url, storage_options)
    offset = row = 0
    try:
        with open(tmp, "wb") as out, fs.open(path, "rb") as f:
            reader = pq.ParquetFile(f)
            for batch in reader.iter_batches(batch_size=BATCH_ROWS, columns=[spec.image_column, spec.label_column]):
                images = batch.column(spec.image_column).to_pylist()
                labels = batch.column(spec.label_column).to_pylist()
                for image, label in zip(images, labels, strict=True):
                    if spec.struct:
                        data, name = (image or {}).get("bytes"), (image or {}).get("path")
                    else:
                        data, name = image, None
                    data = data or b""
                    wnid = _wnid(label, spec, container.url, row)
                    ext = _extension(data)
                    member = posixpath.basename(name) if name else ""
                    if not member:
                        member = f"{stem}_{row:08d}.{ext}"
                    elif "." not in member:
                        member = f"{member}.{ext}"
                    entry = member if len(member.encode()) <= 100 else f"row{row:08d}.{ext}"
                    out.write(tarformat.ustar_header(entry, len(data)))
                    out.write(data)
                    pad = tarformat.padding(len(data))
                    out.write(pad)
                    rows["wnid"].append(wnid)
                    rows["member"].append(member)
                    rows["source"].append(staged)
                    rows["offset"].append(offset + tarformat.BLOCK)
                    rows["size"].append(len(data))
                    offset += tarformat.BLOCK + len(data) + len(pad)
                    row += 1
            out.write(tarformat.end_of_archive(offset))
        store.put_file(tmp, task.rel)
    except BaseException:
        import os

        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return {**rows, "error": ""}


def _wnid(label: Any, spec: ParquetSpec, url: str, row: int) -> str:
    if label is None:
        return UNLABELLED
    if spec.names is None:
        if isinstance(label, str) and _WNID.match(label):
            return label
        raise DataError(
            f"{url} row {row}: label {label!r} is not a wnid; give class indices with --parquet.label-names, or wnids"
        )
    if label < 0:
        return UNLABELLED
    if label >= len(spec.names):
        raise DataError(
            f"{url} row {row}: label {label} but {spec.names_from} has {len(spec.names):,} names; "
            "give the class list these labels index (--parquet.label-names)"
        )
    return spec.names[label]


def given_splits(sources: Any) -> np.ndarray:
    """Per source (an Arrow string array of index sources, the staged tars): the split its file gives."""
    import pyarrow.compute as pc

    out = np.full(len(sources), GIVEN_NONE, np.int8)
    for split, code in SPLITS.items():
        hit = pc.match_substring(sources, f"/{STAGED_DIR}/{split}/").to_numpy(zero_copy_only=False)
        out[hit] = code
    return out
