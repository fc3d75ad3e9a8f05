"""Where the raw release lies and what is in it: layouts, fsspec access, header-only tar indexing.

Three raw layouts (DESIGN, "Raw inputs"), on a local path or any fsspec URL (``s3://``, ``gs://``):

- ``class-tars``: a folder of per-class tars ``nXXXXXXXX.tar``;
- ``whole-tar``: the uncompressed outer archive (``fall11_whole.tar``) holding the class tars; its nested
  members have absolute byte offsets in the outer file, so they are read in place;
- ``whole-tar-gz``: a gzipped outer archive (``winter21_whole.tar.gz``) cannot be range-read, so it is
  streamed once into per-class tars at a staging location, which is then a ``class-tars`` source;
- ``folders``: extracted class folders ``ROOT/[...]/nXXXXXXXX/*.JPEG`` (the official resized download
  with ``train/``, ``val/``, ``small_classes/`` works: members of a wnid are merged across folders).

A ``Container`` is one class's tar (or folder). ``index_container`` lists a tar's members from their
headers alone (name, absolute byte offset, size) without reading member data; it is the unit of
work that the job runs in parallel. URLs, credentials and endpoints follow ``in21k.storage``.
"""

from __future__ import annotations

import io
import logging
import posixpath
import re
import tarfile
from dataclasses import dataclass
from typing import Any, Literal

from in21k.errors import DataError, StorageError
from in21k.storage import filesystem, fs_is_local, full_url

log = logging.getLogger(__name__)

WNID_RE = re.compile(r"^n\d{8}$")
CLASS_TAR_RE = re.compile(r"^(n\d{8})\.tar$")
STAGING_DONE = "_staging_complete.json"
# Header reads go through fsspec's readahead cache: one request covers the headers of several members
# (real members are ~100 KB) without downloading whole class tars.
INDEX_BLOCK_SIZE = 1 << 20

Layout = Literal["class-tars", "whole-tar", "whole-tar-gz", "folders"]

# The index's columns, one row per raw member (regular file) found.
INDEX_COLUMNS = ("wnid", "member", "source", "offset", "size")


@dataclass(frozen=True)
class Container:
    """One class's members: a tar (maybe nested in an outer tar at ``start``) or a list of files."""

    wnid: str
    kind: Literal["tar", "files"]
    url: str  # the file that holds the bytes (class tar, or the outer tar for nested ones)
    start: int = 0
    length: int = -1  # -1: to the end of the file
    files: tuple[tuple[str, int], ...] = ()  # kind "files": (url, size) of each member


@dataclass
class RawSource:
    """The raw release: its layout and its class containers."""

    url: str
    layout: Layout
    containers: list[Container]
    note: str = ""


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


def index_container(container: Container, storage_options: dict[str, Any] | None = None) -> dict[str, list]:
    """Index rows (columns ``INDEX_COLUMNS`` plus ``error``) of one container; never reads member data.

    An unreadable or corrupt tar gives the members found before the damage and an ``error`` text.
    """
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
            found, error = _tar_members_tolerant(window)
    except OSError as exc:
        error = f"cannot read: {type(exc).__name__}: {exc}"
    for name, offset, size in found:
        rows["wnid"].append(container.wnid)
        rows["member"].append(posixpath.basename(name))
        rows["source"].append(container.url)
        rows["offset"].append(container.start + offset)
        rows["size"].append(size)
    return {**rows, "error": error}


def _tar_members_tolerant(fileobj: Any) -> tuple[list[tuple[str, int, int]], str]:
    """(name, data offset, size) of each regular file from headers alone (tarfile seeks over the data).

    A damaged archive keeps the members read before the damage: ``(members, error)``.
    """
    out: list[tuple[str, int, int]] = []
    try:
        tar = tarfile.open(fileobj=fileobj, mode="r:")
    except tarfile.TarError as exc:
        return out, f"not a tar archive: {exc}"
    try:
        while True:
            info = tar.next()
            if info is None:
                break
            if info.isfile():
                out.append((info.name, info.offset_data, info.size))
        # tarfile ends quietly at a bad header after the first; only zero blocks may follow a sound archive.
        fileobj.seek(tar.offset)
        if fileobj.read(512).strip(b"\0"):
            return out, f"damaged tar: unreadable header at byte {tar.offset} after {len(out)} members"
    except (tarfile.TarError, OSError) as exc:
        return out, f"damaged tar after {len(out)} members: {exc}"
    finally:
        tar.close()
    return out, ""


def _wnid_of_tar(name: str) -> str | None:
    m = CLASS_TAR_RE.match(posixpath.basename(name))
    return m.group(1) if m else None


def describe(url: str, storage_options: dict[str, Any] | None = None) -> tuple[Layout, Any, str]:
    """Detect the layout of ``url``; a ``DataError``/``StorageError`` says what to do if it is not a raw release."""
    try:
        fs, path = filesystem(url, storage_options)
        is_file = fs.isfile(path)
        is_dir = not is_file and fs.isdir(path)
    except Exception as exc:  # noqa: BLE001 - credentials, endpoint, bucket: all surface here
        raise StorageError(
            f"cannot read the raw source {url!r}: {type(exc).__name__}: {exc}. Check the path and, "
            "for object storage, the credentials/endpoint (AWS_* variables or storage_options)."
        ) from None
    if is_file:
        name = posixpath.basename(path)
        if name.endswith(".tar.gz") or name.endswith(".tgz"):
            return "whole-tar-gz", fs, path
        if name.endswith(".tar"):
            if _wnid_of_tar(name):
                raise DataError(f"{url!r} is a single class tar; give the folder that holds the class tars")
            return "whole-tar", fs, path
        raise DataError(f"raw source {url!r} is a file but not a .tar or .tar.gz release archive")
    if not is_dir:
        raise DataError(f"raw source {url!r} does not exist (or is not readable with the given credentials)")
    names = [posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)]
    if any(CLASS_TAR_RE.match(n) for n in names):
        return "class-tars", fs, path
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
        members, error = _tar_members_tolerant(f)
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


def stage_gz(fs: Any, path: str, staging: str, storage_options: dict[str, Any] | None = None) -> str:
    """Stream a ``.tar.gz`` outer archive ONCE into per-class tars under ``staging``; returns ``staging``.

    A finished staging (marker file ``_staging_complete.json``) is reused; an interrupted one is redone,
    class tar by class tar, each written whole (local: temp file + rename; object stores: one PUT).
    """
    import json

    from tqdm import tqdm

    sfs, spath = filesystem(staging, storage_options)
    marker = posixpath.join(spath, STAGING_DONE)
    if sfs.exists(marker):
        log.info("reusing staged class tars at %s", staging)
        return staging
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
    with (
        fs.open(path, "rb", block_size=8 << 20) as raw,
        tqdm(total=total, unit="B", unit_scale=True, desc="staging .tar.gz", disable=None) as bar,
    ):
        counted = _CountingReader(raw, bar)
        with tarfile.open(fileobj=counted, mode="r|gz") as tar:
            for info in tar:
                wnid = _wnid_of_tar(info.name)
                if not info.isfile() or not wnid:
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
    with sfs.open(marker, "w") as f:
        f.write(json.dumps({"source": url, "class_tars": count}))
    log.info("staged %d class tars at %s", count, staging)
    return staging


class _CountingReader(io.RawIOBase):
    def __init__(self, f: Any, bar: Any) -> None:
        self._f, self._bar = f, bar

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._bar.update(len(data))
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def open_source(url: str, *, staging: str | None, storage_options: dict[str, Any] | None = None) -> RawSource:
    """Detect the layout and list the class containers of a raw release (stages a .tar.gz first)."""
    layout, fs, path = describe(url, storage_options)
    note = ""
    if layout == "class-tars":
        containers = list_class_tars(fs, path)
    elif layout == "whole-tar":
        containers = list_nested_tars(fs, path)
    elif layout == "whole-tar-gz":
        if not staging:
            raise DataError("a .tar.gz release needs --staging (a folder or prefix for the per-class tars)")
        stage_gz(fs, path, staging, storage_options)
        sfs, spath = filesystem(staging, storage_options)
        containers = list_class_tars(sfs, spath)
        note = f"streamed once from {url} into class tars at {staging}"
    else:
        containers = list_class_folders(fs, path)
    if not containers:
        raise DataError(
            f"no classes found in {url!r}: expected nXXXXXXXX.tar files, an outer .tar/.tar.gz of them, "
            "or class folders nXXXXXXXX/ of images"
        )
    return RawSource(url, layout, containers, note)
