"""URL rules: what a URL names, how names join onto a dataset's root, how a URL is shown.

A local path or ``file://`` URL is local; ``s3://``, ``gs://`` (``gcs://``) and ``http(s)://`` are remote;
``pipe:COMMAND`` names a command's stdout. Names inside a dataset are joined onto its root with ``join``; an
absolute name (a URL, ``/path``) stays as it is, which lets an ``_info.json`` list shards that live elsewhere.
"""

from __future__ import annotations

REMOTE_PROTOCOLS = ("s3", "gs", "gcs", "http", "https")


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
