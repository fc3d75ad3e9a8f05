"""Test helpers: identify samples by the hash of their JPEG bytes (``decode="none"`` yields the stored bytes), and a
faulty or slow TCP proxy in front of a storage server."""

from __future__ import annotations

import hashlib
import re
import socket
import struct
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

# Unequal shard lengths on purpose: the equal-steps rule must hold whatever they are.
TRAIN_LENGTHS = [7, 5, 9, 3, 6, 8, 4, 10]
VAL_LENGTHS = [5, 3, 6, 2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digest(data) -> str:
    return hashlib.sha1(bytes(data)).hexdigest()[:16]


def key_by_digest(root: str | Path, split: str) -> dict[str, str]:
    """sha1 of each stored ``.jpg`` -> its sample key."""
    from in21k.dataset import PreparedDataset

    out = {}
    for shard in PreparedDataset.open(str(root)).shards(split):
        with tarfile.open(shard.url) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".jpg"):
                    out[digest(tar.extractfile(m).read())] = m.name[: -len(".jpg")]
    return out


def batch_keys(loader, table: dict[str, str]) -> list[list[str]]:
    """Iterate a ``decode="none"`` loader once; the sample keys of each batch."""
    return [[table[digest(img.numpy().tobytes())] for img in images] for images, _ in loader]


_REQUEST = re.compile(rb"(GET|HEAD|PUT|POST|DELETE) (/[^ ?]*)\S* HTTP/1\.[01]\r\n")


class FaultProxy:
    """A threaded TCP proxy on 127.0.0.1 in front of an HTTP server, which injects faults into GET responses.

    ``delay`` slows every response down. The first ``faults`` GET requests of each object whose path ``match``
    accepts are sabotaged: with
    ``cut_after`` the connection is reset after that many bytes of the response (mid-body for any object
    larger than it), with ``status`` the proxy answers that status (an S3 ``SlowDown`` error) and closes.
    ``requests`` counts every request by ``(method, path)``. HTTP/1.1 clients send one request at a time
    per connection, so the bytes that follow a GET on a connection are its response.
    """

    def __init__(
        self,
        upstream: str,
        *,
        faults: int = 0,
        cut_after: int | None = None,
        status: int | None = None,
        match: Callable[[str], bool] = lambda path: True,
        delay: float = 0.0,
    ) -> None:
        host, port = upstream.split("://")[-1].rstrip("/").rsplit(":", 1)
        self.upstream = (host, int(port))
        self.faults, self.cut_after, self.status, self.match = faults, cut_after, status, match
        self.delay = delay  # seconds of pause per forwarded chunk of a response: a slow network
        self.requests: Counter = Counter()
        self.injected = 0
        self._done: Counter = Counter()
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        _close(self._sock)

    def gets(self, path_part: str) -> dict[str, int]:
        """GET requests per object whose path contains ``path_part``."""
        return {p: n for (m, p), n in self.requests.items() if m == "GET" and path_part in p}

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _sabotage(self, method: str, path: str) -> bool:
        with self._lock:
            self.requests[(method, path)] += 1
            if method != "GET" or not self.match(path) or self._done[path] >= self.faults:
                return False
            self._done[path] += 1
            self.injected += 1
            return True

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream)
        except OSError:
            _close(client, reset=True)
            return
        left: list[int | None] = [None]  # response bytes still to forward before the cut

        def responses() -> None:
            try:
                while data := upstream.recv(65536):
                    if left[0] is not None and len(data) >= left[0]:
                        client.sendall(data[: left[0]])
                        break
                    if left[0] is not None:
                        left[0] -= len(data)
                    client.sendall(data)
                    if self.delay:
                        time.sleep(self.delay)
            except OSError:
                pass
            _close(client, reset=left[0] is not None)
            _close(upstream)

        threading.Thread(target=responses, daemon=True).start()
        try:
            while data := client.recv(65536):
                for m in _REQUEST.finditer(data):
                    if not self._sabotage(m.group(1).decode(), m.group(2).decode()):
                        continue
                    if self.status is not None:
                        body = (
                            b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                        )
                        head = (
                            f"HTTP/1.1 {self.status} Slow Down\r\nContent-Type: application/xml\r\n"
                            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                        ).encode()
                        client.sendall(head + body)
                        raise OSError("answered")
                    left[0] = self.cut_after
                upstream.sendall(data)
        except OSError:
            pass
        _close(client)
        _close(upstream)


def _close(sock: socket.socket, *, reset: bool = False) -> None:
    """Close now, waking a thread blocked in ``recv`` on it; ``reset``: with a TCP RST, as a crashed peer does."""
    if reset:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    for step in (lambda: sock.shutdown(socket.SHUT_RDWR), sock.close):
        try:
            step()
        except OSError:
            pass
