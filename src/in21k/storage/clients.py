"""Read clients: the library that reads a remote object for ``open_stream``, and one object opened through it.

``s3://`` and ``gs://`` go through ``pyarrow.fs`` (C++; per image ~25x less CPU than s3fs and ~1.5x less than
gcsfs, see docs/benchmarks.md "Object storage"), translated from the same options (``fsspec_options``): key,
secret, token, anon, endpoint_url, region_name for S3; endpoint_url, token ``anon``/``google_default`` and
project for GCS. Any other option (``profile``, ``config_kwargs``, a token file, ...) has no translation here
and the stream falls back to fsspec (s3fs/gcsfs), as do ``http(s)://`` URLs and ``client="fsspec"``.
``client="obstore"`` (S3 only, not installed by default) exists for the benchmark: obstore's runtime does not
survive a fork, so a process that used it must not fork DataLoader workers.

Clients are made per process: the ones kept here are keyed on the pid, so that nothing made before a
DataLoader forked its workers is used across the fork. Each opened object reads one ranged GET per
``readinto`` and keeps no request open between reads.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from typing import Any

from in21k.errors import ConfigError
from in21k.storage.errors import IncompleteReadError
from in21k.storage.filesystems import filesystem, fsspec_options
from in21k.storage.urls import protocol

log = logging.getLogger("in21k.storage")  # one logger for the package (see in21k.storage)

READ_BLOCK = 1 << 22  # 4 MiB reads: few round trips per shard on object storage
STREAM_CLIENTS = ("auto", "pyarrow", "fsspec", "obstore")

# fsspec options that only tune fsspec's own caches: no bearing on which bytes a client reads.
_FSSPEC_ONLY = frozenset(
    {
        "skip_instance_cache",
        "use_listings_cache",
        "listings_expiry_time",
        "max_paths",
        "default_block_size",
        "default_fill_cache",
        "default_cache_type",
    }
)
_clients: dict[tuple, Any] = {}  # (pid, ...) -> pyarrow filesystem or obstore store, made in this process
_regions: dict[str, str] = {}  # bucket -> region (AWS, when neither options nor environment name one)
_fallbacks_logged: set[str] = set()


def _s3_settings(options: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """S3 access from s3fs-style ``options``: the settings, and the options that have no translation."""
    opts = {k: v for k, v in options.items() if k not in _FSSPEC_ONLY}
    ck = dict(opts.pop("client_kwargs", None) or {})
    out = {
        "key": opts.pop("key", None) or ck.pop("aws_access_key_id", None),
        "secret": opts.pop("secret", None) or ck.pop("aws_secret_access_key", None),
        "token": opts.pop("token", None) or ck.pop("aws_session_token", None),
        "anon": bool(opts.pop("anon", False)),
        "endpoint": opts.pop("endpoint_url", None) or ck.pop("endpoint_url", None),
        # botocore's own rule, which s3fs follows: the region from the options, else from the environment.
        "region": ck.pop("region_name", None) or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
    }
    return out, sorted(opts) + [f"client_kwargs.{k}" for k in sorted(ck)]


def _gcs_settings(options: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """GCS access from gcsfs-style ``options``: the settings, and the options that have no translation."""
    opts = {k: v for k, v in options.items() if k not in _FSSPEC_ONLY}
    token = opts.pop("token", None)
    out = {"anon": token == "anon", "endpoint": opts.pop("endpoint_url", None), "project": opts.pop("project", None)}
    left = sorted(opts) + ([] if token in (None, "anon", "google_default") else ["token"])
    return out, left


def _bucket_and_key(url: str) -> tuple[str, str]:
    bucket, _, key = url.split("://", 1)[1].partition("/")
    return bucket, key


def stream_client(url: str, storage_options: dict[str, Any] | None = None, client: str = "auto") -> str:
    """The client ``open_stream`` reads ``url`` with: ``pyarrow``, ``obstore`` or ``fsspec``.

    ``auto``: pyarrow for ``s3://`` and ``gs://`` unless an option has no pyarrow translation (then fsspec,
    logged once); fsspec for ``http(s)://``. A named client is used where it applies, else ``ConfigError``.
    """
    if client not in STREAM_CLIENTS:
        raise ConfigError(f"unknown storage client {client!r}; choose one of {', '.join(STREAM_CLIENTS)}")
    proto = protocol(url)
    if client == "fsspec" or proto in ("http", "https"):
        return "fsspec"
    options = fsspec_options(url, storage_options)
    if client == "obstore" and proto != "s3":
        raise ConfigError(f"the obstore client reads s3:// URLs only, not {url!r}")
    _, left = _s3_settings(options) if proto == "s3" else _gcs_settings(options)
    if not left:
        return "pyarrow" if client == "auto" else client
    if client != "auto":
        raise ConfigError(f"storage options {', '.join(left)} have no {client} equivalent; use client 'fsspec'")
    if ",".join(left) not in _fallbacks_logged:
        _fallbacks_logged.add(",".join(left))
        log.info("storage options %s have no pyarrow equivalent: streaming %s:// through fsspec", left, proto)
    return "fsspec"


def _client(kind: str, url: str, options: dict[str, Any], *, fresh: bool) -> Any:
    """This process's pyarrow filesystem or obstore store for ``url``'s bucket (a new one if ``fresh``)."""
    proto = "gs" if protocol(url) == "gcs" else protocol(url)
    bucket, _ = _bucket_and_key(url)
    key = (os.getpid(), kind, proto, bucket, json.dumps(options, sort_keys=True, default=str))
    if fresh or key not in _clients:
        _clients[key] = _make_client(kind, proto, bucket, options)
    return _clients[key]


def _make_client(kind: str, proto: str, bucket: str, options: dict[str, Any]) -> Any:
    settings, _ = _s3_settings(options) if proto == "s3" else _gcs_settings(options)
    endpoint = settings["endpoint"]
    scheme, host = endpoint.split("://", 1) if endpoint and "://" in endpoint else ("https", endpoint)
    host = host.rstrip("/") if host else None
    if kind == "obstore":
        from obstore.store import S3Store

        config = {
            "access_key_id": settings["key"],
            "secret_access_key": settings["secret"],
            "session_token": settings["token"],
            "endpoint": endpoint,
            "region": settings["region"],
            "skip_signature": settings["anon"],
        }
        # Retries are ours (counted and logged), hence max_retries 0.
        return S3Store(
            bucket,
            config={k: v for k, v in config.items() if v},
            client_options={"allow_http": scheme == "http", "timeout": "300s", "connect_timeout": "10s"},
            retry_config={"max_retries": 0},
        )
    from pyarrow import fs as pafs

    if proto == "gs":
        kw: dict[str, Any] = {"anonymous": settings["anon"], "project_id": settings["project"]}
        if host:
            kw.update(endpoint_override=host, scheme=scheme)
        # google-cloud-cpp retries on its own for up to 15 minutes by default: keep it to 1 s, retries are ours.
        return pafs.GcsFileSystem(**kw, retry_time_limit=datetime.timedelta(seconds=1))
    region = settings["region"]
    if not region and not host:  # AWS itself: the bucket's own region, as s3fs finds it
        if bucket not in _regions:
            _regions[bucket] = pafs.resolve_s3_region(bucket)
        region = _regions[bucket]
    kw = {
        "access_key": settings["key"],
        "secret_key": settings["secret"],
        "session_token": settings["token"],
        "anonymous": settings["anon"],
        "region": region or "us-east-1",
        "connect_timeout": 10.0,
    }
    if host:
        kw.update(endpoint_override=host, scheme=scheme)
    # max_attempts=1: the SDK does not retry on its own, so that every retry is ours, counted and logged.
    return pafs.S3FileSystem(**kw, retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))


class _ArrowObject:
    """One object through pyarrow: a HEAD for its size, then each ``readinto`` is one ranged GET."""

    def __init__(self, fs: Any, path: str) -> None:
        self._file = fs.open_input_file(path)
        self.size: int | None = self._file.size()

    def readinto(self, offset: int, view: memoryview) -> int:
        self._file.seek(offset)
        return self._file.readinto(view)

    def close(self) -> None:
        self._file.close()


class _ObstoreObject:
    """One S3 object through obstore: a HEAD for its size, then each ``readinto`` is one ranged GET."""

    def __init__(self, store: Any, path: str) -> None:
        import obstore

        self._store, self._path, self._get_range = store, path, obstore.get_range
        self.size: int | None = obstore.head(store, path)["size"]

    def readinto(self, offset: int, view: memoryview) -> int:
        end = min(offset + len(view), self.size or 0)
        if end <= offset:
            return 0
        data = memoryview(self._get_range(self._store, self._path, start=offset, end=end))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        pass


class _FsspecObject:
    """One object through fsspec (s3fs, gcsfs, http), without fsspec's read cache: one GET per ``readinto``.

    An HTTP server without range requests (e.g. ``python -m http.server``) answers every GET with the whole
    file; fsspec then refuses reads past byte 0, and this object falls back to one streaming GET per open,
    reading and discarding the bytes before the wanted offset (logged once per process).
    """

    def __init__(self, fs: Any, path: str, block_size: int) -> None:
        self._fs, self._path = fs, path
        self._file = fs.open(path, "rb", block_size=block_size, cache_type="none")
        self.size: int | None = getattr(self._file, "size", None)
        self._streaming = False

    def readinto(self, offset: int, view: memoryview) -> int:
        if not self._streaming:
            try:
                if self._file.tell() != offset:
                    self._file.seek(offset)  # at a start offset, or after a reopen
                return self._file.readinto(view)
            except ValueError as exc:
                if "support range requests" not in str(exc):
                    raise
                self._stream_from_start()
        if self._file.tell() > offset:
            self._file.close()
            self._stream_from_start()
        _skip(self._file, offset - self._file.tell())
        return self._file.readinto(view)

    def _stream_from_start(self) -> None:
        global _warned_no_ranges
        if not _warned_no_ranges:
            _warned_no_ranges = True
            log.info("%s: the server does not support range requests; reading from the start of each file", self._path)
        self._file.close()
        self._file = self._fs.open(self._path, "rb", block_size=0)
        self._streaming = True

    def close(self) -> None:
        self._file.close()


_warned_no_ranges = False


def _skip(f: Any, n: int) -> None:
    """Read and drop ``n`` bytes of a stream that cannot seek; a stream ending first is an incomplete read."""
    buf = bytearray(min(n, READ_BLOCK))
    while n > 0:
        got = f.readinto(memoryview(buf)[: min(n, len(buf))])
        if not got:
            raise IncompleteReadError(f"the response ended {n} bytes before the requested offset")
        n -= got


def open_object(url: str, storage_options: dict[str, Any] | None, client: str, block_size: int, fresh: bool) -> Any:
    """One remote object opened through ``client`` (``fresh``: with a new client, after a failure)."""
    if client == "fsspec":
        fs, path = filesystem(url, storage_options, fresh=True)
        return _FsspecObject(fs, path, block_size)
    options = fsspec_options(url, storage_options)
    store = _client(client, url, options, fresh=fresh)
    if client == "obstore":
        return _ObstoreObject(store, _bucket_and_key(url)[1])
    return _ArrowObject(store, "/".join(_bucket_and_key(url)))
