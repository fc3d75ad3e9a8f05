"""fsspec access: the options and filesystem object for a URL, credentials and endpoints included.

Credentials and endpoints come from ``storage_options`` (fsspec options, given by the user) or else from the
environment the cloud tools use: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` and
``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` for S3-compatible servers; ``STORAGE_EMULATOR_HOST`` for a GCS
emulator (then anonymous access, as Google's own clients do, and gcsfs's JSON-API client only). The endpoints
are handed to the client explicitly rather than left to each client library's own (version-dependent) reading
of them.
"""

from __future__ import annotations

import gc
import os
from typing import Any

from in21k.errors import ConfigError, StorageError
from in21k.storage.urls import is_pipe, protocol


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


def release_filesystems() -> None:
    """Close, in this process, the async filesystems (s3fs, gcsfs, http) that fsspec keeps cached here.

    Call it before forking workers: a forked child empties fsspec's instance cache, and a filesystem that only the
    cache held would then be finalised in the child, on an event loop the child does not run (asyncio's "attached
    to a different loop" tracebacks). Filesystems still referenced elsewhere stay; a child never finalises those.
    """
    import fsspec

    for cls in set(fsspec.registry.values()):  # the implementations this process has used
        if getattr(cls, "async_impl", False):
            cls.clear_instance_cache()
    gc.collect()
