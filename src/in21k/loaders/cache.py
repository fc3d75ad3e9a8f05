"""A bounded local cache of remote shards, shared by every worker and rank of a node (``loader.cache_dir``).

Training from object storage reads every shard once per epoch; with a cache the second and later epochs read
the shards that are still cached from local disk. The cache is a folder of whole shard files:

- **Atomic entries.** A shard is downloaded into ``.partial/<name>.<pid>`` and renamed to its entry name
  only once complete (and flushed), so a reader never sees a half-written shard; a download killed
  mid-way leaves only its partial file, which the next user of the cache deletes (the downloader holds a
  lock on it while alive).
- **Bounded.** ``limit`` bytes, never exceeded: before a download, under a lock on ``.lock``, the space
  it needs is reserved (the partial file is sized up front) and the least recently used entries are
  deleted until entries + reservations + the new shard fit. A shard larger than the whole limit is not
  cached (read from storage as without a cache). Deleting an entry another worker is reading is safe:
  its open file stays readable until closed.
- **Shared.** Workers of several ranks may use one folder. A per-shard lock (``.locks/``) makes one of
  them download a shard while the others wait for the entry and then read it locally.
- **LRU.** Each use of an entry updates its modification time; eviction takes the oldest first.

Entries are named by a digest of the shard's URL plus its base name; the dataset is treated as immutable
(a changed shard at the same URL needs a new cache folder).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import posixpath
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from in21k.errors import ConfigError

log = logging.getLogger(__name__)

COPY_BLOCK = 1 << 22


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    bypassed: int = 0  # shards too large for the whole cache, read from storage directly


class ShardCache:
    """The cache folder ``root`` bounded to ``limit`` bytes (module docstring)."""

    def __init__(self, root: str | Path, limit: int) -> None:
        if limit < 1:
            raise ConfigError(f"loader.cache_limit must be a positive number of bytes, got {limit}")
        self.root = Path(root)
        self.limit = int(limit)
        self.stats = CacheStats()
        for sub in ("", ".partial", ".locks"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def __getstate__(self) -> dict[str, Any]:  # a fresh count in each worker process
        return {"root": self.root, "limit": self.limit, "stats": CacheStats()}

    def entry(self, url: str) -> Path:
        digest = hashlib.sha1(url.encode()).hexdigest()[:16]
        return self.root / f"{digest}-{posixpath.basename(url.rstrip('/'))}"

    @contextlib.contextmanager
    def _lock(self, path: Path) -> Iterator[None]:
        # POSIX record locks (lockf), not flock: they belong to the process, so a DataLoader forking its workers
        # while a lock is held cannot hand the lock to a child that would keep it.
        with open(path, "a+b") as f:
            fcntl.lockf(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.lockf(f, fcntl.LOCK_UN)

    def open(self, url: str, *, size: Callable[[], int], download: Callable[[], IO[bytes]]) -> IO[bytes] | None:
        """The cached shard ``url`` opened for reading (downloaded first on a miss), or ``None`` when it cannot
        be cached now (larger than the whole cache, or the space is held by other downloads): read it from
        storage then. ``size()`` gives its size in bytes and ``download()`` opens it on storage; both are
        called on a miss only. ``stats`` counts hits, misses and bypasses."""
        entry = self.entry(url)
        hit = self._open_entry(entry)
        if hit is not None:
            self.stats.hits += 1
            return hit
        with self._lock(self.root / ".locks" / entry.name):
            hit = self._open_entry(entry)  # another worker may have fetched it while we waited
            if hit is not None:
                self.stats.hits += 1
                return hit
            nbytes = size()
            reserved = self._reserve(entry.name, nbytes) if nbytes <= self.limit else None
            if reserved is None:
                self.stats.bypassed += 1
                return None
            partial, dst = reserved
            try:
                with download() as src:
                    copied = 0
                    while chunk := src.read(COPY_BLOCK):
                        dst.write(chunk)
                        copied += len(chunk)
                if copied != nbytes:
                    raise OSError(f"{url}: downloaded {copied} of {nbytes} bytes")
                dst.flush()
                os.fsync(dst.fileno())
                # Opened before it becomes an entry: another worker may evict the entry the moment it appears,
                # and an open file stays readable.
                f = open(partial, "rb")  # noqa: SIM115 - the caller closes it
                os.replace(partial, entry)
                _touch(entry)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(partial)
                raise
            finally:
                dst.close()  # releases the partial's lock: it is an entry now, or gone
            self.stats.misses += 1
            return f

    def _open_entry(self, entry: Path) -> IO[bytes] | None:
        try:
            f = open(entry, "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError:
            return None
        _touch(entry)  # the most recently used now
        return f

    def _reserve(self, name: str, nbytes: int) -> tuple[Path, IO[bytes]] | None:
        """Room for ``nbytes`` (evicting the least recently used entries): a partial file sized to hold it, open
        for writing and locked for the download's whole life (``None``: other downloads hold the space)."""
        with self._lock(self.root / ".lock"):
            entries, reserved = [], 0
            for p in (self.root / ".partial").iterdir():
                if _abandoned(p):
                    log.info("shard cache: removing %s, left by a download that did not finish", p.name)
                    p.unlink(missing_ok=True)
                    continue
                reserved += _size(p)
            for p in self.root.iterdir():
                if p.is_file() and not p.name.startswith("."):
                    entries.append((p.stat().st_mtime, p.name, _size(p)))
            used = reserved + sum(n for _, _, n in entries)
            for _, victim, n in sorted(entries):
                if used + nbytes <= self.limit:
                    break
                (self.root / victim).unlink(missing_ok=True)
                used -= n
            if used + nbytes > self.limit:  # other downloads hold the space: read this one from storage
                return None
            partial = self.root / ".partial" / f"{name}.{os.getpid()}"
            f = open(partial, "wb")  # noqa: SIM115 - closed by ``open`` once the download is over
            fcntl.lockf(f, fcntl.LOCK_EX)  # held while downloading: a partial nobody holds is abandoned
            f.truncate(nbytes)  # the reservation: counted by every other worker from now on
            return partial, f


def _touch(path: Path) -> None:
    """Set the modification time from the clock itself: the file system's own stamps can be a few ms coarse."""
    now = time.time_ns()
    with contextlib.suppress(OSError):
        os.utime(path, ns=(now, now))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _abandoned(partial: Path) -> bool:
    """Whether no live download holds ``partial``'s lock (its process died: a lock goes with its process,
    zombies included, where a pid check would not)."""
    try:
        with open(partial, "rb+") as f:
            try:
                fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False
            fcntl.lockf(f, fcntl.LOCK_UN)
            return True
    except FileNotFoundError:
        return False
