"""A static HTTP server on 127.0.0.1 for tests: Python's own (whole files only), or one that also answers
single byte-range requests (206), as object stores and most web servers do."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class _Ranged(_Quiet):
    """``Range: bytes=a-b`` (or ``a-``) on files answers 206 with those bytes; everything else as Python's."""

    ranges_served = 0  # how many 206 answers all such servers of this process gave

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        path = self.translate_path(self.path)
        if m is None or not os.path.isfile(path):
            return super().do_GET()
        size = os.path.getsize(path)
        start = int(m[1])
        end = min(int(m[2]) if m[2] else size - 1, size - 1)
        if start >= size:
            self.send_error(416)
            return None
        with open(path, "rb") as f:
            f.seek(start)
            body = f.read(end - start + 1)
        _Ranged.ranges_served += 1
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return None


def ranges_served() -> int:
    """How many byte-range (206) answers the ``ranges=True`` servers of this process have given."""
    return _Ranged.ranges_served


@contextlib.contextmanager
def static_server(root: Path, *, ranges: bool = False) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 until the block ends; yields the base URL (``http://127.0.0.1:PORT``)."""
    handler = functools.partial(_Ranged if ranges else _Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
