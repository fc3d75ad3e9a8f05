"""The atomic ``Store``: reads, listings and whole-or-nothing writes under one root folder or prefix.

Every write lands whole or not at all: local files through a temp file in the same folder and ``os.replace``;
objects in one PUT (an object becomes visible only when complete). fsspec objects stay behind when a ``Store``
is pickled: each process opens its own.
"""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
from pathlib import Path
from typing import Any

from in21k.storage.errors import NotFoundError
from in21k.storage.filesystems import filesystem, fs_is_local
from in21k.storage.urls import display, join


class Store:
    """A root folder or object-store prefix: reads, listings and atomic writes by relative path."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/") or url
        self.storage_options = storage_options
        self._fs: Any = None
        self._root = ""

    def __getstate__(self) -> dict[str, Any]:  # fsspec objects stay behind; each process opens its own
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["storage_options"])

    @property
    def fs(self) -> Any:
        if self._fs is None:
            self._fs, self._root = filesystem(self.url, self.storage_options)
        return self._fs

    @property
    def local(self) -> bool:
        return fs_is_local(self.fs)

    def path(self, rel: str) -> str:
        self.fs  # noqa: B018 - sets _root
        return posixpath.join(self._root, rel) if rel else self._root

    def url_of(self, rel: str) -> str:
        """The URL of ``rel`` (what ``open_stream`` and ``read_bytes`` take)."""
        return join(self.url, rel)

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def listdir(self, rel: str) -> set[str]:
        """Names of the files directly under ``rel`` (empty if it does not exist): one listing request."""
        try:
            return {posixpath.basename(p.rstrip("/")) for p in self.fs.ls(self.path(rel), detail=False)}
        except FileNotFoundError:
            return set()

    def invalidate_cache(self) -> None:
        """Forget cached listings (object stores): the next ``listdir``/``exists`` asks the server."""
        self.fs.invalidate_cache()

    def makedirs(self, rel: str = "") -> None:
        if self.local:
            os.makedirs(self.path(rel), exist_ok=True)

    def read_bytes(self, rel: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(rel))
        except FileNotFoundError:
            raise NotFoundError(f"{display(self.url_of(rel))}: no such file") from None

    def read_many(self, rels: list[str]) -> list[bytes]:
        """The bytes of several files in one call (object stores fetch them concurrently), in order."""
        paths = [self.path(r) for r in rels]
        if not paths:
            return []
        got = self.fs.cat(paths, on_error="raise")
        if len(paths) == 1 and not isinstance(got, dict):
            return [got]
        return [got[p] for p in paths]

    def write_bytes(self, rel: str, data: bytes) -> None:
        if self.local:
            target = Path(self.path(rel))
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        else:
            self.fs.pipe_file(self.path(rel), data)

    def write_json(self, rel: str, obj: Any, *, compact: bool = False) -> None:
        text = json.dumps(obj, separators=(",", ":")) if compact else json.dumps(obj, indent=1) + "\n"
        self.write_bytes(rel, text.encode())

    def temp_file(self, rel: str) -> str:
        """A local path to build ``rel`` in before ``put_file`` (same folder when local, so rename is atomic)."""
        if self.local:
            target = Path(self.path(rel))
            target.parent.mkdir(parents=True, exist_ok=True)
            return str(target.with_name(f".{target.name}.{os.getpid()}.tmp"))
        fd, path = tempfile.mkstemp(suffix=".tmp", prefix="in21k-")
        os.close(fd)
        return path

    def put_file(self, local: str, rel: str) -> None:
        """Move the finished local file ``local`` (from ``temp_file``) to ``rel``, atomically."""
        if self.local:
            with open(local, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(local, self.path(rel))
        else:
            try:
                self.fs.put_file(local, self.path(rel))
            finally:
                os.unlink(local)

    def remove_temp_files(self) -> int:
        """Delete leftover ``.*.tmp`` files of killed runs under a local root; returns how many."""
        if not self.local or not os.path.isdir(self.path("")):
            return 0
        count = 0
        for dirpath, _, files in os.walk(self.path("")):
            for name in files:
                if name.startswith(".") and name.endswith(".tmp"):
                    os.unlink(os.path.join(dirpath, name))
                    count += 1
        return count
