"""The processed ImageNet-21K-P release as input: its layout, its given split, and its ``.tar.gz`` read once.

image-net.org offers winter21 already processed with the original's script: class folders of resized JPEGs in
three folders, usually under one top folder and shipped as one ``.tar.gz``::

    imagenet21k_resized/imagenet21k_train/nXXXXXXXX/nXXXXXXXX_NNNN.JPEG
    imagenet21k_resized/imagenet21k_val/nXXXXXXXX/...              (the first 50 images of each class)
    imagenet21k_resized/imagenet21k_small_classes/nXXXXXXXX/...    (classes the script found too small)

Two layouts: ``processed`` (extracted, on disk or object storage: the folders are listed) and
``processed-tar-gz`` (the archive: a gzip stream cannot be read by byte range, so it is streamed once, start to
end, into one tar per class and folder under the staging location, ``STAGED_DIR/<folder>/nXXXXXXXX.tar``, with
the MD5 of the whole archive computed on the way; a finished staging, marked by ``STAGING_DONE``, is reused).

The split is the release's own: every member's folder is its *given split* (``given_splits``): train,
validation, or held out (``imagenet21k_small_classes``), which the plan keeps unless ``--resplit``. Files that are
not in a class folder of one of the three folders (a README, say) are counted and named in the report
(``outside``), so every member of the archive or folder is accounted for.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import posixpath
import re
import tarfile
import zlib
from typing import Any

import numpy as np

from in21k import tarformat
from in21k.errors import DataError
from in21k.pipeline.plan import GIVEN_HELD_OUT, GIVEN_NONE, GIVEN_TRAIN, GIVEN_VALIDATION
from in21k.progress import progress
from in21k.storage import Store, filesystem, full_url

log = logging.getLogger(__name__)

TRAIN_DIR, VAL_DIR, SMALL_DIR = "imagenet21k_train", "imagenet21k_val", "imagenet21k_small_classes"
FOLDERS = {TRAIN_DIR: GIVEN_TRAIN, VAL_DIR: GIVEN_VALIDATION, SMALL_DIR: GIVEN_HELD_OUT}
STAGED_DIR = "processed"  # under --staging: processed/<folder>/nXXXXXXXX.tar
STAGING_DONE = "_processed_staging_complete.json"
_STAGED_TAR = re.compile(r"^(n\d{8})(?:-\d+)?\.tar$")  # -K: a class folder met again later in the archive
_WNID = re.compile(r"^n\d{8}$")
OUTSIDE_NAMED = 20  # files outside the class folders named in the report (all are counted)
PEEK_ENTRIES = 64  # archive entries looked at to tell the processed .tar.gz from the raw one
PEEK_SKIP = 1 << 20  # ... skipping over files up to this size (a README beside the folders)
_CLASS_TAR = re.compile(r"^n\d{8}\.tar$")
ROOT_ENTRIES_LOOKED_AT = 16  # a processed release's root holds its top folder and maybe a few files beside it


def place(path: str) -> tuple[str, str] | None:
    """``(folder, wnid)`` of a member path ``.../<folder>/nXXXXXXXX/<file>``, or None when it is not in one."""
    parts = [p for p in path.split("/") if p and p != "."]
    for i, part in enumerate(parts[:-2]):
        if part in FOLDERS and _WNID.match(parts[i + 1]) and i + 3 == len(parts):
            return part, parts[i + 1]
    return None


def processed_root(fs: Any, path: str, names: list[str]) -> str | None:
    """The folder holding the three processed folders: ``path`` itself or one of its subfolders (the archive's
    top folder, ``imagenet21k_resized``, beside a few other files), else None."""
    if any(n in FOLDERS for n in names):
        return path
    if len(names) > ROOT_ENTRIES_LOOKED_AT:  # a folder of thousands of class folders is no processed release
        return None
    found = []
    for n in names:
        sub = posixpath.join(path, n)
        if fs.isdir(sub) and any(posixpath.basename(p.rstrip("/")) in FOLDERS for p in fs.ls(sub, detail=False)):
            found.append(sub)
    return found[0] if len(found) == 1 else None


def is_processed_archive(fs: Any, path: str) -> bool:
    """Whether a ``.tar.gz`` is the processed release: an entry under one of the three folders comes before any
    class tar (a raw release starts with one) among its first entries. Reads little of the stream: it stops at a
    class tar, or at a file too large to skip cheaply."""
    try:
        with fs.open(path, "rb", block_size=1 << 16) as raw, gzip.GzipFile(fileobj=raw) as gz:
            with tarfile.open(fileobj=gz, mode="r|") as tar:
                for n, info in enumerate(tar):
                    if any(part in FOLDERS for part in info.name.split("/")):
                        return True
                    if n >= PEEK_ENTRIES or info.size > PEEK_SKIP or _CLASS_TAR.match(posixpath.basename(info.name)):
                        return False
    except (OSError, tarfile.TarError, EOFError, zlib.error):
        return False  # the raw-release path reads it and names the problem
    return False


def list_processed(fs: Any, root: str) -> tuple[list[Any], dict[str, Any]]:
    """The class containers of an extracted processed release (one per wnid, files of all three folders merged;
    each file's folder stays in its URL) and the files found outside the class folders."""
    from in21k.pipeline.sources import Container

    by_wnid: dict[str, list[tuple[str, int]]] = {}
    outside: list[str] = []
    for name, info in sorted(fs.find(root, detail=True).items()):
        if info.get("type", "file") != "file":
            continue
        where = place(posixpath.relpath(name, root))
        if where is None:
            outside.append(posixpath.relpath(name, root))
            continue
        by_wnid.setdefault(where[1], []).append((full_url(fs, name), int(info.get("size") or 0)))
    containers = [Container(w, "files", "", files=tuple(sorted(f))) for w, f in sorted(by_wnid.items())]
    return containers, {"count": len(outside), "first": outside[:OUTSIDE_NAMED]}


def list_staged(staging: str, storage_options: dict[str, Any] | None) -> list[Any]:
    """The class tars of a finished staging of the processed archive."""
    from in21k.pipeline.sources import Container

    fs, root = filesystem(staging, storage_options)
    out = []
    for folder in FOLDERS:
        path = posixpath.join(root, STAGED_DIR, folder)
        if not fs.isdir(path):
            continue
        for info in fs.ls(path, detail=True):
            m = _STAGED_TAR.match(posixpath.basename(info["name"]))
            if m and info.get("type", "file") == "file":
                out.append(Container(m.group(1), "tar", full_url(fs, info["name"]), 0, int(info["size"])))
    return sorted(out, key=lambda c: (c.wnid, c.url))


class _Hashing(io.RawIOBase):
    """Reads through ``f``, feeding every byte to an MD5 and a progress bar."""

    def __init__(self, f: Any, bar: Any) -> None:
        self._f, self._bar, self.md5, self.bytes = f, bar, hashlib.md5(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._f.read(len(b))
        n = len(data)
        b[:n] = data
        self.md5.update(data)
        self.bytes += n
        self._bar.update(n)
        return n

    def drain(self) -> None:
        """Read to the end (what follows the tar's end blocks), so the MD5 covers the whole file."""
        while self._f and self.read(8 << 20):
            pass


def stage_archive(
    url: str, staging: str, storage_options: dict[str, Any] | None, *, show_progress: bool = True
) -> dict[str, Any]:
    """Stream the processed ``.tar.gz`` once into ``STAGED_DIR/<folder>/nXXXXXXXX.tar`` under ``staging``.

    Returns the staging record (also ``STAGING_DONE``): class tars written, files outside the class folders,
    the archive's size and MD5. A finished staging is reused as it is. Each class tar is written whole (local:
    temp file + rename; object stores: one PUT); a class folder met again later in the archive (never in a
    ``tar`` of a folder tree, but possible in a hand-made one) gets a second tar, ``nXXXXXXXX-1.tar``.
    """
    store = Store(staging, storage_options)
    if store.exists(STAGING_DONE):
        log.info("reusing the staged processed release at %s", staging)
        return json.loads(store.read_bytes(STAGING_DONE))
    fs, path = filesystem(url, storage_options)
    total = int(fs.size(path))
    log.info(
        "%s is gzip-compressed and cannot be read by byte range: streaming it once into class tars at %s (needs "
        "about %.1f GB there)",
        url,
        staging,
        total * 1.05 / 1e9,
    )
    store.makedirs()
    written: dict[tuple[str, str], int] = {}
    outside: list[str] = []
    outside_count = 0
    current: tuple[str, str] | None = None
    tmp = rel = ""
    out: Any = None
    offset = 0

    def finish() -> None:
        nonlocal out
        if out is None:
            return
        out.write(tarformat.end_of_archive(offset))
        out.close()
        store.put_file(tmp, rel)
        out = None

    with (
        fs.open(path, "rb", block_size=8 << 20) as raw,
        progress(
            total=total, unit="B", unit_scale=True, desc="staging processed .tar.gz", enabled=show_progress
        ) as bar,
    ):
        reader = _Hashing(raw, bar)
        try:
            with tarfile.open(fileobj=reader, mode="r|gz") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    where = place(info.name)
                    if where is None:
                        outside_count += 1
                        if len(outside) < OUTSIDE_NAMED:
                            outside.append(info.name)
                        continue
                    if where != current:
                        finish()
                        part = written.get(where, 0)
                        written[where] = part + 1
                        suffix = f"-{part}" if part else ""
                        rel = f"{STAGED_DIR}/{where[0]}/{where[1]}{suffix}.tar"
                        tmp = store.temp_file(rel)
                        out = open(tmp, "wb")  # noqa: SIM115 - closed in finish()
                        offset, current = 0, where
                    src = tar.extractfile(info)
                    name = posixpath.basename(info.name)
                    name = name if len(name.encode()) <= 100 else f"member{offset}{posixpath.splitext(name)[1][:20]}"
                    out.write(tarformat.ustar_header(name, info.size))
                    while chunk := src.read(8 << 20):
                        out.write(chunk)
                    out.write(tarformat.padding(info.size))
                    offset += tarformat.BLOCK + info.size + len(tarformat.padding(info.size))
            finish()
            reader.drain()
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise DataError(f"{url} is not a readable .tar.gz ({exc}); check the download (size, MD5)") from None
        finally:
            if out is not None:  # stopped midway: the unfinished class tar is left as a temp file, never published
                out.close()
    record = {
        "source": full_url(fs, path),
        "class_tars": sum(written.values()),
        "outside": {"count": outside_count, "first": outside},
        "size": total,
        "md5": reader.md5.hexdigest(),
    }
    store.write_json(STAGING_DONE, record)
    log.info("staged %d class tars at %s (MD5 of the archive %s)", record["class_tars"], staging, record["md5"])
    return record


def given_splits(sources: Any) -> np.ndarray:
    """Per source (an Arrow string array of index sources): the given split of its folder (``GIVEN_*``)."""
    import pyarrow.compute as pc

    out = np.full(len(sources), GIVEN_NONE, np.int8)
    for folder, code in FOLDERS.items():
        hit = pc.match_substring(sources, f"/{folder}/").to_numpy(zero_copy_only=False)
        out[hit & (out == GIVEN_NONE)] = code
    return out
