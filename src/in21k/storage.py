"""Storage: the one set of rules for every URL the product reads or writes.

The prepare job, the loader, the trainer, ``predict`` and the benchmarks all go through this module, so a
URL means the same thing everywhere:

- a local path or ``file://`` URL; ``s3://``, ``gs://`` (``gcs://``) and ``http(s)://`` through fsspec;
  ``pipe:COMMAND`` (the command's stdout) only where the caller opts in with ``allow_pipe=True``: shard
  names come from ``_info.json``, which may be untrusted, and a ``pipe:`` name would run a shell command.
- Credentials and endpoints come from ``storage_options`` (fsspec options, given by the user) or else from
  the environment the cloud tools use: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` and
  ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` for S3-compatible servers; ``STORAGE_EMULATOR_HOST`` for a
  GCS emulator (then anonymous access, as Google's own clients do, and gcsfs's JSON-API client only). The
  endpoints are handed to the client explicitly rather than left to each client library's own
  (version-dependent) reading of them.
- Names inside a dataset are joined onto its root with ``join``; an absolute name (a URL, ``/path``)
  stays as it is, which lets an ``_info.json`` list shards that live elsewhere.
- Every write lands whole or not at all (``Store``): local files through a temp file in the same folder
  and ``os.replace``; objects in one PUT (an object becomes visible only when complete).

Filesystem objects are made per process: fsspec's own instance cache is reset in a forked child (it keys
on the pid), and the clients ``open_stream`` keeps are keyed on the pid too, so that nothing made before a
DataLoader forked its workers is used across the fork.

Streaming a remote object (``open_stream``, what the loader reads shards with):

- Client: ``s3://`` and ``gs://`` go through ``pyarrow.fs`` (C++; per image ~25x less CPU than s3fs and
  ~1.5x less than gcsfs, see docs/benchmarks.md "Object storage"), translated from the same options
  (``fsspec_options``): key, secret, token, anon, endpoint_url, region_name for S3; endpoint_url, token
  ``anon``/``google_default`` and project for GCS. Any other option (``profile``, ``config_kwargs``, a
  token file, ...) has no translation here and the stream falls back to fsspec (s3fs/gcsfs), as do
  ``http(s)://`` URLs and ``client="fsspec"``. ``client="obstore"`` (S3 only, not installed by default)
  exists for the benchmark: obstore's runtime does not survive a fork, so a process that used it must not
  fork DataLoader workers. Small whole-file reads (``read_bytes``, ``read_json``) always use fsspec, so
  the process that forks the loader's workers has made no pyarrow request (AWS's C++ SDK must not be
  mid-request when a process forks).
- Reads are ranged GETs of ``block_size`` (4 MiB) bytes, one at a time: a 40 MB shard costs one HEAD and
  ten GETs, and no request stays open while a slow consumer works through its bytes.
- Resuming: the stream counts the bytes it has handed out; a transient failure (``is_transient``: a reset,
  refused or timed-out connection, a body cut short, HTTP 5xx or SlowDown) reopens the object with a fresh
  client and goes on from that offset, after a backoff (``Retry``), so the reader sees the same bytes as
  an undisturbed read. A missing object, denied access or an object whose size changed raise at once.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import functools
import gc
import http.client
import io
import json
import logging
import os
import posixpath
import random
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from in21k.errors import ConfigError, DataError, In21kError, StorageError

log = logging.getLogger(__name__)

REMOTE_PROTOCOLS = ("s3", "gs", "gcs", "http", "https")
READ_BLOCK = 1 << 22  # 4 MiB reads: few round trips per shard on object storage
STREAM_CLIENTS = ("auto", "pyarrow", "fsspec", "obstore")


class NotFoundError(StorageError, FileNotFoundError):
    """The file or object does not exist (or is not visible with the given credentials)."""


class PipeNotAllowedError(ConfigError):
    """A ``pipe:`` URL was met without ``allow_pipe=True``."""


class IncompleteReadError(StorageError):
    """A response ended before the bytes the object holds: transient, the read resumes where it stopped."""


# ----------------------------------------------------------------------------------------- URLs
def protocol(url: str) -> str:
    """``file`` for local paths and ``file://``, ``pipe`` for ``pipe:``, else the URL's scheme (lower case)."""
    if url.startswith("pipe:"):
        return "pipe"
    if "://" not in url:
        return "file"
    return url.split("://", 1)[0].lower()


def is_pipe(url: str) -> bool:
    return protocol(url) == "pipe"


def is_remote(url: str) -> bool:
    return protocol(url) in REMOTE_PROTOCOLS


def is_local(url: str) -> bool:
    return protocol(url) == "file"


def local_path(url: str) -> str:
    """The path of a local URL (``file://`` removed)."""
    return url[len("file://") :] if url.startswith("file://") else url


def is_absolute(name: str) -> bool:
    return "://" in name or name.startswith(("/", "pipe:"))


def join(base: str, *names: str) -> str:
    """``names`` joined onto the root ``base`` (local path or URL); an absolute name replaces what is before it."""
    out = base
    for name in names:
        if not name:
            continue
        if is_absolute(name):
            out = name
        else:
            out = out.rstrip("/") + "/" + name.strip("/")
    return out


def display(url: str) -> str:
    """``url`` as shown in messages (a local path stays a path)."""
    return local_path(url)


# ----------------------------------------------------------------------------------------- fsspec
def fsspec_options(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fsspec options for ``url``: the user's ``storage_options`` plus endpoints from the environment."""
    options = dict(storage_options or {})
    proto = protocol(url)
    if proto == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        client_kwargs = dict(options.get("client_kwargs") or {})
        if endpoint and "endpoint_url" not in client_kwargs and "endpoint_url" not in options:
            client_kwargs["endpoint_url"] = endpoint
            options["client_kwargs"] = client_kwargs
    elif proto in ("gs", "gcs"):
        emulator = os.environ.get("STORAGE_EMULATOR_HOST")
        if emulator and "endpoint_url" not in options:
            options["endpoint_url"] = emulator if "://" in emulator else f"http://{emulator}"
            options.setdefault("token", "anon")
    return options


def filesystem(url: str, storage_options: dict[str, Any] | None = None, *, fresh: bool = False) -> tuple[Any, str]:
    """fsspec filesystem and path for ``url``; ``fresh``: a new filesystem object, not fsspec's cached one."""
    import fsspec

    if is_pipe(url):
        raise ConfigError(f"{url!r} is a pipe: URL, which names a command, not a file system")
    options = fsspec_options(url, storage_options)
    if fresh:
        options["skip_instance_cache"] = True
    try:
        if protocol(url) in ("gs", "gcs") and os.environ.get("STORAGE_EMULATOR_HOST"):
            # An emulator speaks GCS's JSON API only: gcsfs's default class first probes each bucket's type over
            # gRPC (zonal/hierarchical buckets), which an emulator cannot answer (a 60 s timeout per bucket).
            from gcsfs.core import GCSFileSystem

            fs = GCSFileSystem(**options)
            return fs, fs._strip_protocol(url)
        return fsspec.core.url_to_fs(url, **options)
    except ImportError as exc:
        extra = {"gs": "gcs", "gcs": "gcs"}.get(protocol(url))
        hint = f" (pip install 'in21k[{extra}]')" if extra else ""
        raise StorageError(f"cannot open {url!r}: {exc}{hint}") from None


def full_url(fs: Any, path: str) -> str:
    """A URL that ``filesystem`` maps back to ``path`` on ``fs`` (keeps ``s3://`` for remote files)."""
    return path if fs_is_local(fs) else fs.unstrip_protocol(path)


def fs_is_local(fs: Any) -> bool:
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return proto in ("file", "local")


# ----------------------------------------------------------------------------------------- retries
@dataclass(frozen=True)
class Retry:
    """How a remote read rides out an outage: exponential backoff with jitter, within a budget.

    An outage is a run of failed attempts with no byte read in between; its budget is ``attempts`` retries
    and ``seconds`` from its first failure, whichever ends first (bytes flowing again start a new budget).
    The wait before retry ``k`` (from 0) is ``base_delay x 2^k``, capped at ``max_delay``, times a random
    factor in [0.5, 1) so that many readers hit by the same outage do not all come back at once.
    """

    attempts: int = 8
    seconds: float = 120.0
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delays(self) -> Iterator[float]:
        """The waits before each retry of one outage, in seconds; ends when the budget is spent."""
        jitter = random.Random()  # never the global generator: the loader seeds that one for augmentation
        start = time.monotonic()
        for k in range(self.attempts):
            left = self.seconds - (time.monotonic() - start)
            if left <= 0:
                return
            yield min(left, min(self.max_delay, self.base_delay * 2**k) * jitter.uniform(0.5, 1.0))


# Lower-case fragments of messages that say trying again cannot help (client libraries put the S3/GCS error
# code in the message: pyarrow "AWS Error ACCESS_DENIED", botocore "AccessDenied", GCS "PERMISSION_DENIED").
_PERMANENT = (
    "accessdenied", "access_denied", "access denied", "invalidaccesskeyid", "invalid_access_key_id",
    "signaturedoesnotmatch", "signature_does_not_match", "nosuchbucket", "no_such_bucket", "nosuchkey",
    "no_such_key", "invalidbucketname", "forbidden", "permission_denied", "permissiondenied", "unauthenticated",
    "unauthorized", "nocredentials", "unable to locate credentials", "precondition", "invalidrange",
)  # fmt: skip
# Exceptions of these HTTP client libraries are network or server failures unless a marker above says otherwise.
_CLIENT_MODULES = ("aiohttp", "botocore", "urllib3", "requests", "obstore", "gcsfs", "google", "fsspec")


def _brief(exc: BaseException) -> str:
    """``Type: first line of the message`` (some clients put a multi-line debug dump in their messages)."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    return f"{type(exc).__name__}: {line[:300]}"


_LOCAL_PERMANENT = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENAMETOOLONG})


def is_transient(exc: BaseException) -> bool:
    """Whether a failed remote read may succeed when tried again.

    Yes: reset, aborted or refused connections, timeouts, bodies cut short, HTTP 5xx, SlowDown/throttling,
    whichever client raised them (pyarrow raises ``OSError`` for all of them). No: a missing object, denied
    access, bad credentials, our own errors, and programming errors (``TypeError``...), which must surface.
    """
    if isinstance(exc, IncompleteReadError):
        return True
    if isinstance(exc, (In21kError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, OSError) and exc.errno in _LOCAL_PERMANENT:  # a full or read-only local disk stays so
        return False
    text = f"{type(exc).__name__} {exc}".lower()
    if any(marker in text for marker in _PERMANENT):
        return False
    if isinstance(exc, (OSError, http.client.HTTPException)):  # ConnectionError, TimeoutError, pyarrow's errors
        return True
    return type(exc).__module__.split(".")[0] in _CLIENT_MODULES


# ----------------------------------------------------------------------------------------- stream clients
# fsspec options that only tune fsspec's own caches: no bearing on which bytes a client reads.
_FSSPEC_ONLY = frozenset({"skip_instance_cache", "use_listings_cache", "listings_expiry_time", "max_paths",
                          "default_block_size", "default_fill_cache", "default_cache_type"})  # fmt: skip
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
    }  # fmt: skip
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

        config = {"access_key_id": settings["key"], "secret_access_key": settings["secret"],
                  "session_token": settings["token"], "endpoint": endpoint, "region": settings["region"],
                  "skip_signature": settings["anon"]}  # fmt: skip
        # Retries are ours (counted and logged), hence max_retries 0.
        return S3Store(bucket, config={k: v for k, v in config.items() if v},
                       client_options={"allow_http": scheme == "http", "timeout": "300s", "connect_timeout": "10s"},
                       retry_config={"max_retries": 0})  # fmt: skip
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
    kw = {"access_key": settings["key"], "secret_key": settings["secret"], "session_token": settings["token"],
          "anonymous": settings["anon"], "region": region or "us-east-1", "connect_timeout": 10.0}  # fmt: skip
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
            log.info("%s: the server does not support range requests; reading from the start of each file",
                     self._path)  # fmt: skip
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


def _open_object(url: str, storage_options: dict[str, Any] | None, client: str, block_size: int, fresh: bool) -> Any:
    if client == "fsspec":
        fs, path = filesystem(url, storage_options, fresh=True)
        return _FsspecObject(fs, path, block_size)
    options = fsspec_options(url, storage_options)
    store = _client(client, url, options, fresh=fresh)
    if client == "obstore":
        return _ObstoreObject(store, _bucket_and_key(url)[1])
    return _ArrowObject(store, "/".join(_bucket_and_key(url)))


class ResilientStream(io.RawIOBase):
    """Sequential reads of one remote object that survive outages by resuming at the offset reached.

    ``open_object(fresh)`` opens the object (``fresh``: with a new client, after a failure) and returns
    something with ``size`` and ``readinto(offset, view)`` (one ranged read). ``open_stream`` wraps this in an
    ``io.BufferedReader``, so reads reach it as ``block_size`` requests.
    """

    def __init__(self, url: str, open_object: Callable[[bool], Any], *, retry: Retry,
                 on_retry: Callable[[], None] | None = None, block_size: int = READ_BLOCK,
                 start: int = 0) -> None:  # fmt: skip
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
                    if isinstance(exc, FileNotFoundError) and not isinstance(exc, In21kError):
                        raise NotFoundError(f"{self.url}: no such object") from None
                    if isinstance(exc, OSError) and not isinstance(exc, In21kError):
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
                        f"{time.monotonic() - began:.0f} s ({_brief(exc)}); the loader's read_retries and "
                        "read_retry_seconds set how long an outage is ridden out"
                    ) from exc
                tries += 1
                self.retries += 1
                if self._on_retry is not None:
                    self._on_retry()
                log.warning("%s: read failed at byte %d (%s); retry %d of %d in %.1f s", self.url, self.offset,
                            _brief(exc), tries, self.retry.attempts, wait)  # fmt: skip
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
    opener = functools.partial(_open_object, url, storage_options, chosen, block_size)
    raw = ResilientStream(url, opener, retry=Retry() if retry is None else retry, on_retry=on_retry,
                          block_size=block_size, start=start)  # fmt: skip
    return io.BufferedReader(raw, buffer_size=block_size)  # type: ignore[return-value]


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
            wanted = [i for i in wanted if isinstance(out[i], Exception) and is_transient(out[i])  # type: ignore[arg-type]
                      and is_remote(ranges[i][0])]  # fmt: skip
            if not wanted:
                break
            delays = delays or self._retry.delays()
            wait = next(delays, None)
            if wait is None:
                break
            url, offset, _ = ranges[wanted[0]]
            log.warning("%d byte ranges failed (%s at byte %d: %s); retrying in %.1f s", len(wanted), url, offset,
                        _brief(out[wanted[0]]), wait)  # type: ignore[arg-type]  # fmt: skip
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


# ----------------------------------------------------------------------------------------- writing
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
