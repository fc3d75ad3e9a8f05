"""Where ``in21k predict`` reads images from: files, folders (recursively), ``http(s)://`` and ``s3://``/``gs://``
URLs, as bytes."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from in21k import storage
from in21k.errors import DataError
from in21k.loaders.folders import IMAGE_SUFFIXES

log = logging.getLogger(__name__)


@dataclass
class InputImage:
    """One input: its name as given (path or URL) and its bytes, or the reason it could not be read."""

    name: str
    data: bytes | None = None
    error: str | None = None


def is_url(text: str) -> bool:
    """http(s):// and object-store URLs (``in21k.storage``): read as they are, never expanded."""
    return storage.is_remote(text)


def fetch_url(url: str, *, timeout: float, max_bytes: int = 64 << 20) -> bytes:
    import urllib.request

    req = urllib.request.Request(url, headers={"User-Agent": "in21k-predict"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (only http(s) reaches here)
        data = resp.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise DataError(f"{url}: more than {max_bytes >> 20} MiB, not an image to classify")
    return data


def expand(inputs: Sequence[str]) -> list[str]:
    """Folders become their image files (recursively, sorted); files and URLs stay as given."""
    if not inputs:
        raise DataError("give at least one IMAGE, FOLDER or http(s):// URL")
    out: list[str] = []
    for item in inputs:
        if is_url(item):
            out.append(item)
            continue
        path = Path(item)
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"folder {item!r} holds no image file ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        elif path.is_file():
            out.append(item)
        else:
            raise DataError(f"{item!r} is not a file, a folder or an http(s)://, s3:// or gs:// URL")
    return out


def read_inputs(inputs: Sequence[str], *, timeout: float = 30.0) -> Iterator[InputImage]:
    """The bytes of every input; a URL that cannot be fetched yields an ``InputImage`` with ``error`` set."""
    for name in expand(inputs):
        if is_url(name):
            try:
                storage.check_access(name)  # a wrong host, bucket or object: its cause, in seconds
                if name.startswith(("http://", "https://")):  # web images: a timeout, a size cap, a User-Agent
                    data = fetch_url(name, timeout=timeout)
                else:  # s3://, gs://: credentials and endpoints as everywhere else
                    data = storage.read_bytes(name)
                yield InputImage(name, data)
            except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors
                log.warning("cannot fetch %s: %s", name, exc)
                yield InputImage(name, error=f"cannot fetch: {exc}")
        else:
            yield InputImage(name, Path(name).read_bytes())
