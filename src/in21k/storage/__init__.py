"""Storage: the one set of rules for every URL the product reads or writes.

The prepare job, the loader, the trainer, ``predict`` and the benchmarks all go through this package, so a
URL means the same thing everywhere. Its modules, one concern each (import the names from ``in21k.storage``):

- ``urls``: what a URL names (local path or ``file://``; ``s3://``, ``gs://``, ``http(s)://``; ``pipe:``),
  ``join`` of names onto a dataset root, ``display`` in messages;
- ``filesystems``: fsspec options and filesystem objects, credentials and endpoints from the options or
  the environment; ``release_filesystems`` before a process forks workers;
- ``retry``: which failures are transient (``is_transient``) and the backoff budget of an outage (``Retry``);
- ``access``: the first contact with an address (``check_access``: wrong endpoint, bucket or object, missing or
  refused credentials fail in seconds with one line), and ``classify``, which reads a client library's error;
- ``clients``: the library a remote object is streamed with (pyarrow, fsspec or obstore: ``stream_client``);
- ``streams``: ``open_stream``, sequential reads that resume at the offset reached after a transient failure;
- ``files``: whole small files (``read_bytes``, ``read_json``, ``size``, ``exists``);
- ``ranges``: ``RangeReader``, byte ranges of many files at once (what ``prepare`` reads members with);
- ``store``: ``Store``, a root folder or prefix with atomic writes (what every writer writes through);
- ``errors``: ``NotFoundError``, ``PipeNotAllowedError``, ``IncompleteReadError`` (and ``access.AccessError``).

Filesystem objects and clients are made per process: fsspec's own instance cache is reset in a forked child
(it keys on the pid), and the clients ``open_stream`` keeps are keyed on the pid too. Every module logs as
``in21k.storage``, one logger, so a caller can filter or prefix the package's lines in one place (``prepare``
names the shard a read retry happens for).
"""

from __future__ import annotations

import logging

from in21k.storage.access import AccessError, check_access, classify
from in21k.storage.clients import READ_BLOCK, STREAM_CLIENTS, stream_client
from in21k.storage.errors import IncompleteReadError, NotFoundError, PipeNotAllowedError
from in21k.storage.files import exists, locate, read_bytes, read_json, size
from in21k.storage.filesystems import filesystem, fs_is_local, fsspec_options, full_url, release_filesystems
from in21k.storage.ranges import RangeReader
from in21k.storage.retry import Retry, is_transient
from in21k.storage.store import Store
from in21k.storage.streams import ResilientStream, open_stream
from in21k.storage.urls import (
    REMOTE_PROTOCOLS,
    display,
    is_absolute,
    is_local,
    is_pipe,
    is_remote,
    join,
    local_path,
    protocol,
)

log = logging.getLogger(__name__)

__all__ = [
    "AccessError",
    "READ_BLOCK",
    "REMOTE_PROTOCOLS",
    "STREAM_CLIENTS",
    "IncompleteReadError",
    "NotFoundError",
    "PipeNotAllowedError",
    "RangeReader",
    "ResilientStream",
    "Retry",
    "Store",
    "check_access",
    "classify",
    "display",
    "exists",
    "filesystem",
    "fs_is_local",
    "fsspec_options",
    "full_url",
    "is_absolute",
    "is_local",
    "is_pipe",
    "is_remote",
    "is_transient",
    "join",
    "local_path",
    "locate",
    "open_stream",
    "protocol",
    "read_bytes",
    "read_json",
    "release_filesystems",
    "size",
    "stream_client",
]
