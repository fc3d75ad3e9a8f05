"""Resumable streams: ``open_stream``, sequential reads of a local file, a remote object or a command's output.

A remote object is read in ranged GETs of ``block_size`` (4 MiB) bytes, one at a time: a 40 MB shard costs one
HEAD and ten GETs, and no request stays open while a slow consumer works through its bytes. The stream counts
the bytes it has handed out; a transient failure (``is_transient``: a reset, refused or timed-out connection, a
body cut short, HTTP 5xx or SlowDown) reopens the object with a fresh client and goes on from that offset, after
a backoff (``Retry``), so the reader sees the same bytes as an undisturbed read. A missing object, denied access
or an object whose size changed raise at once (as one line: ``access.classify`` reads the library's error).

``pipe:COMMAND`` (the command's stdout) is read only where the caller opts in with ``allow_pipe=True``: shard
names come from ``_info.json``, which may be untrusted, and a ``pipe:`` name would run a shell command.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

from in21k.errors import In21kError, StorageError
from in21k.storage.access import AccessError, classify, explain
from in21k.storage.clients import READ_BLOCK, open_object, stream_client
from in21k.storage.errors import IncompleteReadError, NotFoundError, PipeNotAllowedError
from in21k.storage.retry import Retry, brief, is_transient
from in21k.storage.urls import display, is_local, is_pipe, local_path

log = logging.getLogger("in21k.storage")  # one logger for the package (see in21k.storage)


class ResilientStream(io.RawIOBase):
    """Sequential reads of one remote object that survive outages by resuming at the offset reached.

    ``open_object(fresh)`` opens the object (``fresh``: with a new client, after a failure) and returns
    something with ``size`` and ``readinto(offset, view)`` (one ranged read). ``open_stream`` wraps this in an
    ``io.BufferedReader``, so reads reach it as ``block_size`` requests.
    """

    def __init__(
        self,
        url: str,
        open_object: Callable[[bool], Any],
        *,
        retry: Retry,
        on_retry: Callable[[], None] | None = None,
        block_size: int = READ_BLOCK,
        start: int = 0,
    ) -> None:
        super().__init__()
        self.url, self.retry, self.block_size = url, retry, block_size
        self._open_object, self._on_retry = open_object, on_retry
        self.offset = start  # the next byte to hand out: where a reopened read continues
        self.retries = 0
        self.size: int | None = None
        self._obj: Any = None
        self._attempt(lambda: 0)  # open now: a missing object raises here, an outage is ridden out

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        return self._attempt(lambda: self._read(view)) if view.nbytes else 0

    def readall(self) -> bytes:
        chunks, buf = [], bytearray(self.block_size)
        while n := self.readinto(buf):
            chunks.append(bytes(buf[:n]))
        return b"".join(chunks)

    def close(self) -> None:
        if self._obj is not None:
            obj, self._obj = self._obj, None
            obj.close()
        super().close()

    def _read(self, view: memoryview) -> int:
        if self.size is not None and self.offset >= self.size:
            return 0
        n = self._obj.readinto(self.offset, view)
        if not n and self.size is not None:
            raise IncompleteReadError(f"the response ended at byte {self.offset} of {self.size}")
        self.offset += n
        return n

    def _open(self, fresh: bool) -> None:
        obj = self._open_object(fresh)
        if self.size is not None and obj.size is not None and obj.size != self.size:
            obj.close()
            raise StorageError(
                f"{self.url} changed while being read ({self.size} -> {obj.size} bytes): cannot resume it"
            )
        self.size = obj.size if obj.size is not None else self.size
        self._obj = obj

    def _attempt(self, action: Callable[[], int]) -> int:
        delays: Iterator[float] | None = None
        while True:
            try:
                if self._obj is None:
                    self._open(fresh=delays is not None)
                return action()
            except Exception as exc:
                if not is_transient(exc):
                    if isinstance(exc, In21kError):
                        raise
                    cause = classify(exc)  # a library's own error (botocore's missing credentials...): one line
                    if cause is not None and cause.kind != "object":
                        raise AccessError(explain(self.url, cause)) from None
                    if isinstance(exc, FileNotFoundError) or cause is not None:
                        raise NotFoundError(f"{self.url}: no such object") from None
                    if isinstance(exc, OSError):
                        raise StorageError(f"{self.url}: {exc}") from exc
                    raise
                if self._obj is not None:
                    obj, self._obj = self._obj, None
                    with contextlib.suppress(Exception):  # its connection may be what broke
                        obj.close()
                if delays is None:
                    delays, tries, began = self.retry.delays(), 0, time.monotonic()
                wait = next(delays, None)
                if wait is None:
                    raise StorageError(
                        f"{self.url}: reading at byte {self.offset} failed after {tries} retries over "
                        f"{time.monotonic() - began:.0f} s ({brief(exc)}); the loader's read_retries and "
                        "read_retry_seconds set how long an outage is ridden out"
                    ) from exc
                tries += 1
                self.retries += 1
                if self._on_retry is not None:
                    self._on_retry()
                log.warning(
                    "%s: read failed at byte %d (%s); retry %d of %d in %.1f s",
                    self.url,
                    self.offset,
                    brief(exc),
                    tries,
                    self.retry.attempts,
                    wait,
                )
                time.sleep(wait)


# ----------------------------------------------------------------------------------------- reading
class _PipeStream:
    """The stdout of a shell command; closing it waits for the command and checks its exit status."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.proc = subprocess.Popen(url[len("pipe:") :], shell=True, stdout=subprocess.PIPE, bufsize=READ_BLOCK)  # noqa: S602

    def read(self, n: int = -1) -> bytes:
        return self.proc.stdout.read(n)  # type: ignore[union-attr]

    def close(self) -> None:
        self.proc.stdout.close()  # type: ignore[union-attr]
        status = self.proc.wait()
        if status not in (0, -13, 141):  # 141 / -SIGPIPE: we stopped reading early on purpose
            raise StorageError(f"{self.url}: command exited with status {status}")

    def __enter__(self) -> _PipeStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_stream(
    url: str,
    *,
    storage_options: dict[str, Any] | None = None,
    allow_pipe: bool = False,
    block_size: int = READ_BLOCK,
    retry: Retry | None = None,
    client: str = "auto",
    on_retry: Callable[[], None] | None = None,
    start: int = 0,
) -> IO[bytes]:
    """Open ``url`` for sequential binary reading from byte ``start``. Raises ``NotFoundError`` or
    ``StorageError`` naming the URL.

    A remote object is read in ranged requests of ``block_size`` bytes through ``client`` (``stream_client``)
    and resumes at the offset reached after a transient failure, within ``retry`` (default ``Retry()``);
    ``on_retry`` is called at each retry. Local files and ``pipe:`` commands are read as they are.
    """
    if is_pipe(url):
        if not allow_pipe:
            raise PipeNotAllowedError(
                f"refusing to run {url!r}: pipe: URLs run shell commands and shard names may come from an untrusted "
                "_info.json; pass allow_pipe=True (loader.allow_pipe) only for data you trust"
            )
        return _PipeStream(url)  # type: ignore[return-value]
    if is_local(url):
        try:
            f = open(local_path(url), "rb", buffering=block_size)  # noqa: SIM115
        except FileNotFoundError:
            raise NotFoundError(f"{display(url)}: no such file") from None
        except OSError as exc:
            raise StorageError(f"{display(url)}: {exc}") from exc
        if start:
            f.seek(start)
        return f
    chosen = stream_client(url, storage_options, client)
    opener = functools.partial(open_object, url, storage_options, chosen, block_size)
    raw = ResilientStream(
        url, opener, retry=Retry() if retry is None else retry, on_retry=on_retry, block_size=block_size, start=start
    )
    return io.BufferedReader(raw, buffer_size=block_size)  # type: ignore[return-value]
