"""Whole small files at any URL: their bytes, their JSON, their size, whether they exist.

Whole-file reads always go through fsspec, never pyarrow: the process that forks the loader's workers then has
made no pyarrow request (AWS's C++ SDK must not be mid-request when a process forks).
"""

from __future__ import annotations

import gc
import json
import os
from typing import Any

from in21k.errors import DataError, StorageError
from in21k.storage.access import check_access
from in21k.storage.errors import NotFoundError
from in21k.storage.filesystems import filesystem
from in21k.storage.streams import open_stream
from in21k.storage.urls import display, is_local, is_remote, local_path


def locate(url: str, *, storage_options: dict[str, Any] | None = None, what: str) -> tuple[Any, str, str]:
    """``(fs, path, kind)`` of a user-given input, ``kind`` being ``file``, ``folder`` or ``missing``: the address
    checked first (``check_access``: a wrong endpoint, bucket or credentials fail within seconds with their cause),
    and any other failure to look is a ``StorageError`` that starts with ``what`` (how the message names the input,
    e.g. ``--against NAME=URL``)."""
    check_access(url, storage_options, what="any")
    try:
        fs, path = filesystem(url, storage_options)
        if fs.isfile(path):
            return fs, path, "file"
        return fs, path, "folder" if fs.isdir(path) else "missing"
    except Exception as exc:  # noqa: BLE001 - credentials, endpoint, bucket: all surface here
        raise StorageError(
            f"{what}: cannot read it ({type(exc).__name__}: {exc}); check the URL and, for object storage, the "
            "credentials and endpoint (AWS_* variables, STORAGE_EMULATOR_HOST or storage_options)"
        ) from None


def read_bytes(url: str, *, storage_options: dict[str, Any] | None = None) -> bytes:
    """The whole content of a (small) file at any non-pipe URL (through fsspec: see the module docstring)."""
    with open_stream(url, storage_options=storage_options, client="fsspec") as f:
        data = f.read()
    del f
    if is_remote(url):
        # Collect the async filesystem (s3fs, gcsfs) here, in the process that owns its event loop: if a
        # forked DataLoader worker were the one to collect it, its session finaliser would run on the wrong
        # loop and log "attached to a different loop" errors.
        gc.collect()
    return data


def read_json(url: str, *, storage_options: dict[str, Any] | None = None) -> Any:
    """A JSON document from any non-pipe URL; ``DataError`` if it is not JSON."""
    raw = read_bytes(url, storage_options=storage_options)
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{display(url)} is not valid JSON: {exc}") from None


def size(url: str, *, storage_options: dict[str, Any] | None = None) -> int:
    """The size in bytes of a file or object."""
    if is_local(url):
        return os.path.getsize(local_path(url))
    fs, path = filesystem(url, storage_options)
    try:
        return int(fs.size(path))
    except FileNotFoundError:
        raise NotFoundError(f"{url}: no such object") from None


def exists(url: str, *, storage_options: dict[str, Any] | None = None) -> bool:
    if is_local(url):
        return os.path.exists(local_path(url))
    fs, path = filesystem(url, storage_options)
    return fs.exists(path)
