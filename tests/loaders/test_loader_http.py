"""Streaming over HTTP from a local server (127.0.0.1) gives the batches of local disk."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from in21k.loaders import create_loader
from tests.loaders.loader_helpers import batch_keys, key_by_digest


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture()
def http_root(prepared: Path) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(prepared))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_gives_the_same_batches_as_local_disk(prepared: Path, http_root: str) -> None:
    table = key_by_digest(prepared, "train")
    kw = dict(split="train", batch_size=4, num_workers=2, seed=2, decode="none")
    local = create_loader(data=str(prepared), **kw)
    remote = create_loader(data=http_root, **kw)
    assert batch_keys(remote, table) == batch_keys(local, table)
    with pytest.raises(FileNotFoundError, match="_info.json"):
        create_loader(data=http_root + "/nowhere", split="train", batch_size=4, num_workers=0)
