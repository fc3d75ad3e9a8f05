"""Storage: the one set of rules for every URL the product reads or writes.

The prepare job, the loader, the trainer, ``predict`` and the benchmarks all go through this module, so a
URL means the same thing everywhere:

- a local path or ``file://`` URL; ``s3://``, ``gs://`` (``gcs://``) and ``http(s)://`` through fsspec;
  ``pipe:COMMAND`` (the command's stdout) only where the caller opts in with ``allow_pipe=True``: shard
  names come from ``_info.json``, which may be untrusted, and a ``pipe:`` name would run a shell command.
- Credentials and endpoints come from ``storage_options`` (fsspec options, given by the user) or else from
  the environment the cloud tools use: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` and
  ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` for S3-compatible servers; ``STORAGE_EMULATOR_HOST`` for a
  GCS emulator (then anonymous access, as Google's own clients do, and gcsfs's JSON-API client only). The endpoints are handed to the
  client explicitly rather than left to each client library's own (version-dependent) reading of them.
- Names inside a dataset are joined onto its root with ``join``; an absolute name (a URL, ``/path``)
  stays as it is, which lets an ``_info.json`` list shards that live elsewhere.
- Every write lands whole or not at all (``Store``): local files through a temp file in the same folder
  and ``os.replace``; objects in one PUT (an object becomes visible only when complete).

Filesystem objects are made per process: fsspec's own instance cache is reset in a forked child (it keys
on the pid), and ``open_stream`` takes a fresh one per stream so that nothing made before a DataLoader
forked its workers is used across the fork.
"""

from __future__ import annotations

import gc
import json
import os
import posixpath
import subprocess
import tempfile
from pathlib import Path
from typing import IO, Any

from in21k.errors import ConfigError, DataError, StorageError

REMOTE_PROTOCOLS = ("s3", "gs", "gcs", "http", "https")
READ_BLOCK = 1 << 22  # 4 MiB reads: few round trips per shard on object storage


class NotFoundError(StorageError, FileNotFoundError):
    """The file or object does not exist (or is not visible with the given credentials)."""


class PipeNotAllowedError(ConfigError):
    """A ``pipe:`` URL was met without ``allow_pipe=True``."""


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
    url: str, *, storage_options: dict[str, Any] | None = None, allow_pipe: bool = False, block_size: int = READ_BLOCK
) -> IO[bytes]:
    """Open ``url`` for sequential binary reading. Raises ``NotFoundError`` or ``StorageError`` naming the URL."""
    if is_pipe(url):
        if not allow_pipe:
            raise PipeNotAllowedError(
                f"refusing to run {url!r}: pipe: URLs run shell commands and shard names may come from an untrusted "
                "_info.json; pass allow_pipe=True (loader.allow_pipe) only for data you trust"
            )
        return _PipeStream(url)  # type: ignore[return-value]
    if is_local(url):
        try:
            return open(local_path(url), "rb", buffering=block_size)  # noqa: SIM115
        except FileNotFoundError:
            raise NotFoundError(f"{display(url)}: no such file") from None
        except OSError as exc:
            raise StorageError(f"{display(url)}: {exc}") from exc
    fs, path = filesystem(url, storage_options, fresh=True)
    try:
        return fs.open(path, "rb", block_size=block_size)
    except FileNotFoundError:
        raise NotFoundError(f"{url}: no such object") from None
    except OSError as exc:
        raise StorageError(f"{url}: {exc}") from exc


def read_bytes(url: str, *, storage_options: dict[str, Any] | None = None) -> bytes:
    """The whole content of a (small) file at any non-pipe URL."""
    with open_stream(url, storage_options=storage_options) as f:
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


def exists(url: str, *, storage_options: dict[str, Any] | None = None) -> bool:
    if is_local(url):
        return os.path.exists(local_path(url))
    fs, path = filesystem(url, storage_options)
    return fs.exists(path)


class RangeReader:
    """Byte ranges of many files at once; one filesystem per protocol, opened lazily in this process.

    Ranges are requested sorted by file and offset in one ``cat_ranges`` call per filesystem, so object
    stores fetch them concurrently and local disks read them in order.
    """

    def __init__(self, storage_options: dict[str, Any] | None = None) -> None:
        self._so = storage_options
        self._fs: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:  # filesystem objects stay behind; each process opens its own
        return {"_so": self._so, "_fs": {}}

    def _fs_path(self, url: str) -> tuple[Any, str]:
        proto = protocol(url)
        if proto not in self._fs:
            self._fs[proto] = filesystem(url, self._so)[0]
        fs = self._fs[proto]
        return fs, fs._strip_protocol(url)

    def fetch(self, ranges: list[tuple[str, int, int]]) -> list[bytes | Exception]:
        """The bytes of each ``(url, offset, size)`` (an ``Exception`` where a read failed), in order."""
        out: list[bytes | Exception] = [b""] * len(ranges)
        wanted = sorted((i for i, r in enumerate(ranges) if r[2] > 0), key=lambda i: (ranges[i][0], ranges[i][1]))
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
        return out


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
