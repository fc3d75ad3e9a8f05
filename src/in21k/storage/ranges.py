"""Range reads: the byte ranges of many files fetched at once, riding out transient failures."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from in21k.storage.filesystems import filesystem
from in21k.storage.retry import Retry, brief, is_transient
from in21k.storage.urls import is_remote, protocol

log = logging.getLogger("in21k.storage")  # one logger for the package (see in21k.storage)


class RangeReader:
    """Byte ranges of many files at once; one filesystem per protocol, opened lazily in this process.

    Ranges are requested sorted by file and offset in one ``cat_ranges`` call per filesystem, so object
    stores fetch them concurrently and local disks read them in order. Remote ranges that fail transiently
    are fetched again with fresh filesystems after a backoff, within ``retry``; what still fails is returned
    as the exception (the prepare job then fails the shard and Ray retries it).
    """

    def __init__(self, storage_options: dict[str, Any] | None = None, retry: Retry | None = None) -> None:
        self._so = storage_options
        self._retry = Retry() if retry is None else retry
        self._fs: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:  # filesystem objects stay behind; each process opens its own
        return {"_so": self._so, "_retry": self._retry, "_fs": {}}

    def _fs_path(self, url: str) -> tuple[Any, str]:
        proto = protocol(url)
        if proto not in self._fs:
            self._fs[proto] = filesystem(url, self._so, fresh=self._fresh)[0]
        fs = self._fs[proto]
        return fs, fs._strip_protocol(url)

    _fresh = False  # after a failure: new filesystem objects (a restarted server needs new connections)

    def fetch(self, ranges: list[tuple[str, int, int]]) -> list[bytes | Exception]:
        """The bytes of each ``(url, offset, size)`` (an ``Exception`` where a read failed), in order."""
        out: list[bytes | Exception] = [b""] * len(ranges)
        wanted = sorted((i for i, r in enumerate(ranges) if r[2] > 0), key=lambda i: (ranges[i][0], ranges[i][1]))
        delays: Iterator[float] | None = None
        while wanted:
            self._fetch_into(out, ranges, wanted)
            wanted = [
                i
                for i in wanted
                if isinstance(out[i], Exception)
                and is_transient(out[i])  # type: ignore[arg-type]
                and is_remote(ranges[i][0])
            ]
            if not wanted:
                break
            delays = delays or self._retry.delays()
            wait = next(delays, None)
            if wait is None:
                break
            url, offset, _ = ranges[wanted[0]]
            log.warning(
                "%d byte ranges failed (%s at byte %d: %s); retrying in %.1f s",
                len(wanted),
                url,
                offset,
                brief(out[wanted[0]]),
                wait,
            )  # type: ignore[arg-type]
            time.sleep(wait)
            self._fs, self._fresh = {}, True
        return out

    def _fetch_into(self, out: list[bytes | Exception], ranges: list[tuple[str, int, int]], wanted: list[int]) -> None:
        by_fs: dict[int, tuple[Any, list[int], list[str]]] = {}
        for i in wanted:
            fs, path = self._fs_path(ranges[i][0])
            entry = by_fs.setdefault(id(fs), (fs, [], []))
            entry[1].append(i)
            entry[2].append(path)
        for fs, idx, paths in by_fs.values():
            starts = [ranges[i][1] for i in idx]
            ends = [ranges[i][1] + ranges[i][2] for i in idx]
            results = fs.cat_ranges(paths, starts, ends, on_error="return")
            for i, data in zip(idx, results, strict=True):
                out[i] = data
