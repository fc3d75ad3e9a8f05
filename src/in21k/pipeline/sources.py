"""Where the raw release lies and what is in it: layouts, fsspec access, header-only tar indexing.

The raw layouts ``prepare`` accepts (docs/design.md, "The raw release"), on a local path or any fsspec URL
(``s3://``, ``gs://``):

- ``class-tars``: a folder of per-class tars ``nXXXXXXXX.tar``;
- ``whole-tar``: the uncompressed outer archive (``fall11_whole.tar``) holding the class tars; its nested
  members have absolute byte offsets in the outer file, so they are read in place;
- ``whole-tar-gz``: a gzipped outer archive (``winter21_whole.tar.gz``) cannot be range-read, so it is
  streamed once into per-class tars at a staging location, which is then a ``class-tars`` source;
- ``folders``: extracted class folders ``ROOT/[...]/nXXXXXXXX/*.JPEG`` (members of a wnid are merged across
  folders);
- ``processed``, ``processed-tar-gz``: the processed ImageNet-21K-P release, extracted or as its archive, with
  its own split (``in21k.pipeline.processed``);
- ``parquet``: parquet image sets (``in21k.pipeline.parquet_source``), converted file by file into staged tars
  while they are indexed.

A ``Container`` is one class's tar (or folder). ``index_container`` lists a tar's members from their
headers alone (name, absolute byte offset, size; ``in21k.tarformat.member_offsets``) without reading member
data; ``index_table`` does it for a batch of containers as one Arrow table, the unit of work that the job
runs in parallel. ``Index`` holds every member of the release as columns (about 35 bytes a member), in
canonical order. URLs, credentials and endpoints follow ``in21k.storage``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import posixpath
import re
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from in21k.errors import DataError
from in21k.progress import progress
from in21k.storage import filesystem, fs_is_local, full_url, is_remote, is_transient, locate
from in21k.tarformat import member_offsets, scan_tolerant

log = logging.getLogger(__name__)

WNID_RE = re.compile(r"^n\d{8}$")
CLASS_TAR_RE = re.compile(r"^(n\d{8})\.tar$")
STAGING_DONE = "_staging_complete.json"
# Header reads go through fsspec's readahead cache: one request covers the headers of several members
# (real members are ~100 KB) without downloading whole class tars.
INDEX_BLOCK_SIZE = 1 << 20

Layout = Literal["class-tars", "whole-tar", "whole-tar-gz", "folders", "processed", "processed-tar-gz", "parquet"]

# The index's columns, one row per raw member (regular file) found.
INDEX_COLUMNS = ("wnid", "member", "source", "offset", "size")
# Rows per slice where the index is compared or remapped in pieces (bounds temporary memory).
INDEX_SLICE = 1 << 20


@dataclass(frozen=True)
class Container:
    """One class's members: a tar (maybe nested in an outer tar at ``start``) or a list of files; or, kind
    ``parquet``, one parquet file of many classes that indexing converts into a staged tar (``spec``)."""

    wnid: str
    kind: Literal["tar", "files", "parquet"]
    url: str  # the file that holds the bytes (class tar, or the outer tar for nested ones)
    start: int = 0
    length: int = -1  # -1: to the end of the file
    files: tuple[tuple[str, int], ...] = ()  # kind "files": (url, size) of each member
    spec: Any = None  # kind "parquet": its parquet_source.ParquetTask

    @property
    def where(self) -> str:
        """How reports name the container: its file, with the offset of a nested tar."""
        return f"{self.url}@{self.start}" if self.start else self.url


@dataclass
class RawSource:
    """The raw release: its layout and its class containers."""

    url: str
    layout: Layout
    containers: list[Container]
    note: str = ""
    # What identifies the release (in21k.pipeline.release): the outer file's size and, where it was streamed
    # whole, its MD5; files found outside class folders.
    release: dict[str, Any] = field(default_factory=dict)
    classes: list[str] | None = None  # the classes the release has, where known before indexing


class _Window(io.RawIOBase):
    """A read-only view of ``length`` bytes of ``f`` starting at ``start`` (for nested tars)."""

    def __init__(self, f: Any, start: int, length: int) -> None:
        self._f, self._start, self._length, self._pos = f, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._length}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def read(self, n: int = -1) -> bytes:
        left = self._length - self._pos
        if left <= 0:
            return b""
        n = left if n is None or n < 0 else min(n, left)
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        self._pos += len(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def _read_failure(url: str) -> Callable[[OSError], bool] | None:
    """For a remote tar, which ``OSError``s are failed reads (the job retries them) rather than a damaged tar."""
    return is_transient if is_remote(url) else None


def index_container(container: Container, storage_options: dict[str, Any] | None = None) -> dict[str, list]:
    """Index rows (columns ``INDEX_COLUMNS`` plus ``error``) of one container; never reads member data.

    An unreadable or corrupt tar gives the members found before the damage and an ``error`` text.
    """
    if container.kind == "parquet":
        from in21k.pipeline.parquet_source import stage_file

        return stage_file(container, storage_options)
    rows: dict[str, list] = {k: [] for k in INDEX_COLUMNS}
    error = ""
    if container.kind == "files":
        for url, size in container.files:
            rows["wnid"].append(container.wnid)
            rows["member"].append(posixpath.basename(url))
            rows["source"].append(url)
            rows["offset"].append(0)
            rows["size"].append(int(size))
        return {**rows, "error": error}
    fs, path = filesystem(container.url, storage_options)
    found: list[tuple[str, int, int]] = []
    try:
        with fs.open(path, "rb", block_size=INDEX_BLOCK_SIZE, cache_type="readahead") as f:
            length = container.length if container.length >= 0 else fs.size(path) - container.start
            window = _Window(f, container.start, length)
            found, error = member_offsets(window, length, read_failure=_read_failure(container.url))
    except OSError as exc:
        if is_remote(container.url) and is_transient(exc):
            # The object store is unreachable or overloaded, not the tar damaged: recording the tar as damaged
            # would drop its members from the cached index for good. The task fails and the job retries it.
            raise
        error = f"cannot read: {type(exc).__name__}: {exc}"
    for name, offset, size in found:
        rows["wnid"].append(container.wnid)
        rows["member"].append(posixpath.basename(name))
        rows["source"].append(container.url)
        rows["offset"].append(container.start + offset)
        rows["size"].append(size)
    return {**rows, "error": error}


def index_table(
    containers: Iterable[Container], storage_options: dict[str, Any] | None = None
) -> tuple[Any, list[dict[str, str]]]:
    """The index rows of ``containers`` as one Arrow table, and the damaged containers.

    Columns ``INDEX_COLUMNS``; ``wnid`` and ``source`` dictionary-encoded. Containers keep their order and
    each container's rows are sorted by (member, source, offset), so a release listed in wnid order gives
    rows already in canonical order and ``Index`` need not sort them.
    """
    import pyarrow as pa

    cols: dict[str, list] = {k: [] for k in INDEX_COLUMNS}
    wnids: dict[str, int] = {}
    srcs: dict[str, int] = {}
    errors: list[dict[str, str]] = []
    for c in containers:
        rows = index_container(c, storage_options)
        if rows["error"]:
            errors.append({"container": c.where, "error": rows["error"]})
        order = sorted(
            range(len(rows["member"])), key=lambda i: (rows["member"][i], rows["source"][i], rows["offset"][i])
        )
        for i in order:
            cols["wnid"].append(wnids.setdefault(rows["wnid"][i], len(wnids)))
            cols["member"].append(rows["member"][i])
            cols["source"].append(srcs.setdefault(rows["source"][i], len(srcs)))
            cols["offset"].append(rows["offset"][i])
            cols["size"].append(rows["size"][i])

    def encoded(codes: list[int], values: dict[str, int]) -> Any:
        return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), pa.array(list(values), pa.string()))

    table = pa.table(
        {
            "wnid": encoded(cols["wnid"], wnids),
            "member": pa.array(cols["member"], pa.string()),
            "source": encoded(cols["source"], srcs),
            "offset": pa.array(cols["offset"], pa.int64()),
            "size": pa.array(cols["size"], pa.int64()),
        }
    )
    return table, errors


def member_bytes(table: Any) -> int:
    """Bytes of the ``member`` strings of an index table (what ``Index.from_parts`` preallocates)."""
    import pyarrow.compute as pc

    return int(pc.sum(pc.binary_length(table.column("member"))).as_py() or 0)


@dataclass
class Index:
    """Every raw member of the release, one row each, as columns in canonical order.

    Canonical order is (wnid, member, source, offset), whatever the listing order. ``wnid`` and ``source``
    are int32 codes into the sorted distinct ``wnids`` and ``sources`` (so code order is name order),
    ``member`` is one Arrow string array; every integer column has the narrowest of int16/int32/int64 that
    holds it. About 35 bytes a member for a release of class tars (fall11's 14.2 M members: ~0.5 GB; 39
    bytes for ``fall11_whole.tar``, whose offsets need int64), instead of ~0.5 KB as Python objects.
    """

    wnids: Any  # pa.StringArray, sorted, distinct
    sources: Any  # pa.StringArray, sorted, distinct
    wnid: np.ndarray  # code into wnids (int16 below 32,768 classes)
    member: Any  # pa.StringArray (or LargeStringArray past 2 GiB of names)
    source: np.ndarray  # code into sources
    offset: np.ndarray  # absolute byte offset of the member's data in its source (int32 or int64)
    size: np.ndarray  # int32 or int64

    @property
    def num_rows(self) -> int:
        return len(self.wnid)

    @classmethod
    def from_columns(cls, columns: dict[str, list]) -> Index:
        """An index from Python lists (``INDEX_COLUMNS``), in any order (tests, small tools)."""
        import pyarrow as pa

        table = pa.table(
            {
                "wnid": pa.array(columns["wnid"], pa.string()),
                "member": pa.array(columns["member"], pa.string()),
                "source": pa.array(columns["source"], pa.string()),
                "offset": pa.array(columns["offset"], pa.int64()),
                "size": pa.array(columns["size"], pa.int64()),
            }
        )
        return cls.from_parts([table], rows=table.num_rows, names_bytes=member_bytes(table))

    @classmethod
    def from_parts(cls, parts: Iterable[Any], *, rows: int, names_bytes: int) -> Index:
        """Concatenate index tables (``index_table``'s) holding ``rows`` rows and ``names_bytes`` of member names.

        The columns are allocated once at their final size and each part is copied in and dropped, so the
        peak is the index plus one part (concatenating Arrow chunks would hold everything twice).
        """
        import pyarrow as pa

        large = names_bytes >= 2**31
        name_offsets = np.zeros(rows + 1, np.int64 if large else np.int32)
        name_data = np.empty(names_bytes, np.uint8)
        wnid = np.empty(rows, np.int32)
        source = np.empty(rows, np.int32)
        offset = np.empty(rows, np.int64)
        size = np.empty(rows, np.int64)
        wnid_values: list[Any] = []
        source_values: list[Any] = []
        pos = dpos = 0
        for part in parts:
            n = part.num_rows
            if n == 0:
                continue
            if pos + n > rows:
                raise DataError(
                    f"the index parts hold more than the {rows} rows their list gives; delete _work/ to re-index"
                )
            for name, codes, values in (("wnid", wnid, wnid_values), ("source", source, source_values)):
                col = part.column(name).combine_chunks()
                if not pa.types.is_dictionary(col.type):
                    col = col.dictionary_encode()
                base = sum(len(v) for v in values)
                codes[pos : pos + n] = col.indices.to_numpy(zero_copy_only=False).astype(np.int64) + base
                values.append(col.dictionary.cast(pa.string()))
            offset[pos : pos + n] = part.column("offset").to_numpy()
            size[pos : pos + n] = part.column("size").to_numpy()
            names = part.column("member").combine_chunks()
            if names.null_count:
                raise DataError("the index holds a member without a name; delete _work/ to re-index")
            kind = np.int64 if pa.types.is_large_string(names.type) else np.int32
            starts = np.frombuffer(names.buffers()[1], kind, n + 1, names.offset * np.dtype(kind).itemsize)
            first, last = int(starts[0]), int(starts[-1])
            if dpos + last - first > names_bytes:
                raise DataError("the index parts hold more member-name bytes than listed; delete _work/ to re-index")
            name_offsets[pos + 1 : pos + n + 1] = starts[1:] - first + dpos
            if last > first:
                name_data[dpos : dpos + last - first] = np.frombuffer(names.buffers()[2], np.uint8, last - first, first)
            pos += n
            dpos += last - first
        if (pos, dpos) != (rows, names_bytes):
            raise DataError(f"the index parts hold {pos} rows, not {rows}; delete _work/ to re-index")
        member = pa.Array.from_buffers(
            pa.large_string() if large else pa.string(),
            rows,
            [None, pa.py_buffer(name_offsets), pa.py_buffer(name_data)],
        )
        wnids, wnid = _sorted_codes(wnid_values, wnid)
        sources, source = _sorted_codes(source_values, source)
        wnid = _narrow(wnid)  # one column at a time: each wide copy is freed before the next is narrowed
        source = _narrow(source)
        offset = _narrow(offset)
        size = _narrow(size)
        index = cls(wnids, sources, wnid, member, source, offset, size)
        index._canonicalize()
        return index

    def _canonicalize(self) -> None:
        """Put rows in canonical order, unless they are in it already (the usual case: no copy then)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        n = self.num_rows
        for a in range(0, max(n - 1, 0), INDEX_SLICE):
            b = min(a + INDEX_SLICE, n - 1)
            w0, w1 = self.wnid[a:b], self.wnid[a + 1 : b + 1]
            m0, m1 = self.member.slice(a, b - a), self.member.slice(a + 1, b - a)
            s0, s1 = self.source[a:b], self.source[a + 1 : b + 1]
            m_lt = pc.less(m0, m1).to_numpy(zero_copy_only=False)
            m_eq = pc.equal(m0, m1).to_numpy(zero_copy_only=False)
            tail = (s0 < s1) | ((s0 == s1) & (self.offset[a:b] <= self.offset[a + 1 : b + 1]))
            if not ((w0 < w1) | ((w0 == w1) & (m_lt | (m_eq & tail)))).all():
                break
        else:
            return
        # Out of order (rows of one wnid in several containers, or an index built from a list): sort.
        keys = pa.table({"w": self.wnid, "m": self.member, "s": self.source, "o": self.offset})
        order = pc.sort_indices(keys, sort_keys=[(k, "ascending") for k in ("w", "m", "s", "o")])
        self.member = self.member.take(order)
        order = order.to_numpy()
        self.wnid, self.source = self.wnid[order], self.source[order]
        self.offset, self.size = self.offset[order], self.size[order]

    def wnid_strings(self, rows: Any) -> Any:
        """The wnids of ``rows`` (an index array or slice of row numbers) as an Arrow string array."""
        import pyarrow as pa

        return self.wnids.take(pa.array(self.wnid[rows]))

    def source_strings(self, rows: Any) -> Any:
        import pyarrow as pa

        return self.sources.take(pa.array(self.source[rows]))


def _narrow(a: np.ndarray) -> np.ndarray:
    """``a`` as int16 or int32 where its values fit (fall11's class tars: ~170 MB less for 14.2 M members)."""
    if not len(a):
        return a
    lo, hi = int(a.min()), int(a.max())
    for kind in (np.int16, np.int32):
        if kind().itemsize < a.itemsize and np.iinfo(kind).min <= lo and hi <= np.iinfo(kind).max:
            return a.astype(kind)
    return a


def _sorted_codes(values: list[Any], codes: np.ndarray) -> tuple[Any, np.ndarray]:
    """Codes into the concatenation of ``values`` (one dictionary per part) -> codes into their sorted union."""
    import pyarrow as pa
    import pyarrow.compute as pc

    allv = pa.concat_arrays(values) if values else pa.array([], pa.string())
    distinct = pc.unique(allv)
    distinct = distinct.take(pc.sort_indices(distinct))
    lut = pc.index_in(allv, value_set=distinct).to_numpy(zero_copy_only=False).astype(np.int32)
    if not np.array_equal(lut, np.arange(len(lut), dtype=np.int32)):
        for a in range(0, len(codes), INDEX_SLICE):
            codes[a : a + INDEX_SLICE] = lut[codes[a : a + INDEX_SLICE]]
    return distinct, codes


def _wnid_of_tar(name: str) -> str | None:
    m = CLASS_TAR_RE.match(posixpath.basename(name))
    return m.group(1) if m else None


def describe(url: str, storage_options: dict[str, Any] | None = None) -> tuple[Layout, Any, str]:
    """Detect the layout of ``url``; a ``DataError``/``StorageError`` says what to do if it is not a raw release."""
    fs, path, kind = locate(url, storage_options=storage_options, what=f"the raw source {url!r}")
    if kind == "file":
        from in21k.pipeline.processed import is_processed_archive

        name = posixpath.basename(path)
        if name.endswith(".tar.gz") or name.endswith(".tgz"):
            return ("processed-tar-gz" if is_processed_archive(fs, path) else "whole-tar-gz"), fs, path
        if name.endswith(".parquet"):
            return "parquet", fs, path
        if name.endswith(".tar"):
            if _wnid_of_tar(name):
                raise DataError(f"{url!r} is a single class tar; give the folder that holds the class tars")
            return "whole-tar", fs, path
        raise DataError(f"raw source {url!r} is a file but not a .tar or .tar.gz release archive, nor a .parquet file")
    if kind == "missing":
        raise DataError(f"raw source {url!r} does not exist (or is not readable with the given credentials)")
    from in21k.pipeline.parquet_source import looks_like_parquet
    from in21k.pipeline.processed import processed_root

    names = [posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)]
    if any(CLASS_TAR_RE.match(n) for n in names):
        return "class-tars", fs, path
    root = processed_root(fs, path, names)
    if root is not None:
        return "processed", fs, root
    if looks_like_parquet(fs, path, names):
        return "parquet", fs, path
    return "folders", fs, path


def list_class_tars(fs: Any, path: str) -> list[Container]:
    out = []
    for info in fs.ls(path, detail=True):
        wnid = _wnid_of_tar(info["name"])
        if wnid and info.get("type", "file") == "file":
            out.append(Container(wnid, "tar", full_url(fs, info["name"]), 0, int(info["size"])))
    return sorted(out, key=lambda c: (c.wnid, c.url))


def list_nested_tars(fs: Any, path: str) -> list[Container]:
    """The class tars inside an uncompressed outer tar, by their absolute offsets (headers only)."""
    url = full_url(fs, path)
    with fs.open(path, "rb", block_size=INDEX_BLOCK_SIZE, cache_type="readahead") as f:
        members, error = scan_tolerant(f, read_failure=_read_failure(url))  # an outage must not drop classes
    if error and not members:
        raise DataError(f"{url!r} is not a readable tar archive ({error})")
    if error:
        log.warning("outer archive %s: %s; using the %d class tars before the damage", url, error, len(members))
    out = []
    for name, offset, size in members:
        wnid = _wnid_of_tar(name)
        if wnid:
            out.append(Container(wnid, "tar", url, offset, size))
        else:
            log.warning("outer archive %s: skipping %s (not a class tar nXXXXXXXX.tar)", url, name)
    return sorted(out, key=lambda c: (c.wnid, c.start))


def list_class_folders(fs: Any, path: str) -> list[Container]:
    """Class folders anywhere under ``path`` (merged by wnid), each with its files and sizes."""
    found = fs.find(path, detail=True)
    by_wnid: dict[str, list[tuple[str, int]]] = {}
    for name, info in found.items():
        if info.get("type", "file") != "file":
            continue
        parent = posixpath.basename(posixpath.dirname(name))
        if WNID_RE.match(parent):
            by_wnid.setdefault(parent, []).append((full_url(fs, name), int(info.get("size") or 0)))
    return [Container(w, "files", "", files=tuple(sorted(files))) for w, files in sorted(by_wnid.items())]


def stage_gz(
    fs: Any, path: str, staging: str, storage_options: dict[str, Any] | None = None, *, show_progress: bool = True
) -> dict[str, Any]:
    """Stream a ``.tar.gz`` outer archive ONCE into per-class tars under ``staging``; returns the staging record
    (``_staging_complete.json``: class tars written, the archive's size and MD5, skipped members).

    A finished staging (marker file ``_staging_complete.json``) is reused; an interrupted one is redone,
    class tar by class tar, each written whole (local: temp file + rename; object stores: one PUT). The MD5
    covers the whole archive (read to its end after the tar's end blocks): it costs nothing on a stream read
    anyway, and identifies the download.
    """
    import json

    sfs, spath = filesystem(staging, storage_options)
    marker = posixpath.join(spath, STAGING_DONE)
    if sfs.exists(marker):
        log.info("reusing staged class tars at %s", staging)
        with sfs.open(marker, "r") as f:
            return json.loads(f.read())
    total = fs.size(path)
    url = full_url(fs, path)
    log.info(
        "%s is gzip-compressed and cannot be read by byte range: streaming it once into per-class tars at %s "
        "(needs about %.1f GB there; point --staging at fast storage with room)",
        url,
        staging,
        total * 1.05 / 1e9,
    )
    sfs.makedirs(spath, exist_ok=True)
    count = 0
    skipped: list[str] = []
    skipped_count = 0
    with (
        fs.open(path, "rb", block_size=8 << 20) as raw,
        progress(total=total, unit="B", unit_scale=True, desc="staging .tar.gz", enabled=show_progress) as bar,
    ):
        counted = _CountingReader(raw, bar)
        with tarfile.open(fileobj=counted, mode="r|gz") as tar:
            for info in tar:
                wnid = _wnid_of_tar(info.name)
                if not info.isfile():
                    continue
                if not wnid:  # not a class tar: counted and named in the report
                    skipped_count += 1
                    if len(skipped) < 20:
                        skipped.append(info.name)
                    continue
                src = tar.extractfile(info)
                dest = posixpath.join(spath, f"{wnid}.tar")
                tmp = dest + ".tmp"
                target = tmp if fs_is_local(sfs) else dest
                with sfs.open(target, "wb") as out:
                    while chunk := src.read(8 << 20):
                        out.write(chunk)
                if target != dest:
                    sfs.mv(tmp, dest)
                count += 1
        counted.drain()
    record = {
        "source": url,
        "class_tars": count,
        "size": total,
        "md5": counted.md5.hexdigest(),
        "outside": {"count": skipped_count, "first": skipped},
    }
    with sfs.open(marker, "w") as f:
        f.write(json.dumps(record))
    log.info("staged %d class tars at %s (MD5 of the archive %s)", count, staging, record["md5"])
    return record


class _CountingReader(io.RawIOBase):
    """Reads through ``f``, counting bytes on a progress bar and hashing them (MD5 of the whole stream)."""

    def __init__(self, f: Any, bar: Any) -> None:
        self._f, self._bar = f, bar
        self.md5 = hashlib.md5()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._bar.update(len(data))
        self.md5.update(data)
        return data

    def drain(self) -> None:
        """Read what the tar reader left (end blocks, padding), so the MD5 covers the whole file."""
        while self.read(8 << 20):
            pass

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def open_source(
    url: str,
    *,
    staging: str | None,
    storage_options: dict[str, Any] | None = None,
    show_progress: bool = True,
    parquet: Any = None,
) -> RawSource:
    """Detect the layout and list the class containers of a raw release (stages a .tar.gz first, with a progress
    bar or log lines unless ``show_progress`` is false). ``parquet``: the ``ParquetOptions`` of a parquet set."""
    from in21k.pipeline import parquet_source, processed
    from in21k.pipeline.options import ParquetOptions

    layout, fs, path = describe(url, storage_options)
    note = ""
    release: dict[str, Any] = {}
    classes: list[str] | None = None
    if layout in ("whole-tar-gz", "processed-tar-gz", "parquet") and not staging:
        raise DataError(f"a {layout} release needs --staging (a folder or prefix for the staged tars)")
    if layout == "class-tars":
        containers = list_class_tars(fs, path)
    elif layout == "whole-tar":
        containers = list_nested_tars(fs, path)
        release = {"size": int(fs.size(path))}
    elif layout == "whole-tar-gz":
        release = stage_gz(fs, path, staging, storage_options, show_progress=show_progress)
        sfs, spath = filesystem(staging, storage_options)
        containers = list_class_tars(sfs, spath)
        note = f"streamed once from {url} into class tars at {staging}"
    elif layout == "processed-tar-gz":
        release = processed.stage_archive(url, staging, storage_options, show_progress=show_progress)
        containers = processed.list_staged(staging, storage_options)
        note = f"streamed once from {url} into class tars at {staging}"
    elif layout == "processed":
        containers, outside = processed.list_processed(fs, path)
        release = {"outside": outside}
    elif layout == "parquet":
        files = parquet_source.find_files(fs, path)
        if not files:
            raise DataError(f"no parquet files found in {url!r}")
        spec = parquet_source.inspect(url, files, fs, parquet or ParquetOptions(), storage_options)
        containers = parquet_source.tasks(url, fs, path, files, spec, staging)
        classes = list(spec.names) if spec.names is not None else None
        note = f"{len(files)} parquet files converted into tars at {staging}; labels: {spec.names_from}"
        release = {"files": len(files), "size": sum(int(fs.size(f)) for f in files)}
    else:
        containers = list_class_folders(fs, path)
    if not containers:
        raise DataError(
            f"no classes found in {url!r}: expected nXXXXXXXX.tar files, an outer .tar/.tar.gz of them, "
            "class folders nXXXXXXXX/ of images, the processed release's folders, or parquet files"
        )
    if classes is None and layout != "parquet":
        classes = sorted({c.wnid for c in containers})
    return RawSource(url, layout, containers, note, release, classes)
