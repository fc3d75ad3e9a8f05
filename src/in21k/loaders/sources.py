"""Where shard bytes come from: a URL turned into a readable byte stream.

Local paths (and ``file://``), ``s3://`` and ``gs://`` (fsspec; credentials and endpoint from the usual
environment variables such as ``AWS_ACCESS_KEY_ID`` / ``AWS_ENDPOINT_URL``, or ``storage_options``),
``http(s)://`` (fsspec's HTTP filesystem), and ``pipe:COMMAND`` (the command's stdout) only when the
caller opts in with ``allow_pipe=True``: shard names come from ``_info.json``, which may be untrusted,
and a ``pipe:`` name would run a shell command.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
from typing import IO, Any

REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "http://", "https://")
READ_BLOCK = 1 << 22  # 4 MiB reads: few round trips per shard on object storage


class PipeNotAllowedError(ValueError):
    """A ``pipe:`` URL was met without ``allow_pipe=True``."""


def is_pipe(url: str) -> bool:
    return url.startswith("pipe:")


def is_remote(url: str) -> bool:
    return url.startswith(REMOTE_SCHEMES)


def join_url(base: str, name: str) -> str:
    """``name`` relative to the dataset root ``base``; absolute URLs and paths are kept as they are."""
    if "://" in name or is_pipe(name) or name.startswith("/"):
        return name
    if base.startswith("file://"):
        base = base[len("file://") :]
    return base.rstrip("/") + "/" + name


def _local_path(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def _fsspec_options(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    options = dict(storage_options or {})
    if url.startswith("s3://"):
        # botocore reads AWS_ENDPOINT_URL itself from 1.31 on; pass it explicitly so older clients agree.
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        client_kwargs = dict(options.get("client_kwargs") or {})
        if endpoint and "endpoint_url" not in client_kwargs and "endpoint_url" not in options:
            client_kwargs["endpoint_url"] = endpoint
            options["client_kwargs"] = client_kwargs
    return options


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
            raise OSError(f"{self.url}: command exited with status {status}")

    def __enter__(self) -> _PipeStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_stream(url: str, *, storage_options: dict[str, Any] | None = None, allow_pipe: bool = False) -> IO[bytes]:
    """Open ``url`` for sequential binary reading; raises ``FileNotFoundError``/``OSError`` naming the URL."""
    if is_pipe(url):
        if not allow_pipe:
            raise PipeNotAllowedError(
                f"refusing to run {url!r}: pipe: URLs run shell commands and shard names may come from an untrusted "
                "_info.json; pass allow_pipe=True (--allow-pipe) only for data you trust"
            )
        return _PipeStream(url)  # type: ignore[return-value]
    if is_remote(url):
        import fsspec

        try:
            # A fresh filesystem object per open: fsspec caches instances, and one created before the
            # DataLoader forked its workers must not be reused across the fork.
            fs, path = fsspec.core.url_to_fs(url, skip_instance_cache=True, **_fsspec_options(url, storage_options))
            return fs.open(path, "rb", block_size=READ_BLOCK)
        except FileNotFoundError:
            raise FileNotFoundError(f"{url}: no such object") from None
        except OSError as exc:
            raise OSError(f"{url}: {exc}") from exc
    path = _local_path(url)
    try:
        return open(path, "rb", buffering=READ_BLOCK)  # noqa: SIM115
    except FileNotFoundError:
        raise FileNotFoundError(f"{url}: no such file") from None


def read_json(url: str, *, storage_options: dict[str, Any] | None = None) -> Any:
    """Read a small JSON document (``_info.json``) from any supported non-pipe URL."""
    try:
        with open_stream(url, storage_options=storage_options) as f:
            raw = f.read()
        del f
        if is_remote(url):
            # Collect the async filesystem (s3fs, gcsfs) here, in the process that owns its event loop:
            # if a forked DataLoader worker were the one to collect it, its session finaliser would run
            # on the wrong loop and log "attached to a different loop" errors.
            gc.collect()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{url} not found: --data must be a prepared dataset root (the folder or prefix that holds _info.json)"
        ) from None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{url} is not valid JSON: {exc}") from None
