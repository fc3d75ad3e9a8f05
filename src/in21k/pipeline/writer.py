"""Writing outputs: the ``Store`` (local folder or object-store prefix) and the WebDataset tar format.

Every file lands whole or not at all: on local disk through a temp file and ``os.replace``, on object
storage as one PUT (an object becomes visible only when complete). Shard tars have fixed headers (mtime
0, uid/gid 0, uname/gname ``in21k``, mode 0644, ustar) and members in a fixed order (samples in plan
order, each sample's ``.cls``, ``.jpg``, ``.json``), so the same inputs and config give identical bytes.
"""

from __future__ import annotations

import json
import os
import posixpath
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from in21k.pipeline.sources import url_to_fs

TAR_OWNER = "in21k"


class Store:
    """The output root: ``write_bytes``/``put_file`` atomically, ``exists``, ``read_bytes`` by relative path."""

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
            self._fs, self._root = url_to_fs(self.url, self.storage_options)
        return self._fs

    @property
    def local(self) -> bool:
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return protocol in ("file", "local")

    def path(self, rel: str) -> str:
        self.fs  # noqa: B018 - sets _root
        return posixpath.join(self._root, rel) if rel else self._root

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def listdir(self, rel: str) -> set[str]:
        """Names of the files directly under ``rel`` (empty if it does not exist): one listing request."""
        try:
            return {posixpath.basename(p.rstrip("/")) for p in self.fs.ls(self.path(rel), detail=False)}
        except FileNotFoundError:
            return set()

    def makedirs(self, rel: str = "") -> None:
        if self.local:
            os.makedirs(self.path(rel), exist_ok=True)

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

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

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode())

    def temp_file(self, rel: str) -> str:
        """A local path to build ``rel`` in before ``put_file`` (same folder when local, so rename is atomic)."""
        if self.local:
            target = Path(self.path(rel))
            target.parent.mkdir(parents=True, exist_ok=True)
            return str(target.with_name(f".{target.name}.{os.getpid()}.tmp"))
        fd, path = tempfile.mkstemp(suffix=".tmp", prefix="in21k-")
        os.close(fd)
        return path

    def put_file(self, local_path: str, rel: str) -> None:
        if self.local:
            with open(local_path, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(local_path, self.path(rel))
        else:
            try:
                self.fs.put_file(local_path, self.path(rel))
            finally:
                os.unlink(local_path)

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


def ustar_header(name: str, size: int) -> bytes:
    """The 512-byte ustar header of a regular file with our fixed fields (what ``tarfile`` writes, faster)."""
    raw = name.encode("utf-8")
    if len(raw) > 100:
        raise ValueError(f"tar member name longer than 100 bytes: {name!r}")
    header = b"".join(
        (
            raw.ljust(100, b"\0"),
            b"0000644\0",  # mode
            b"0000000\0",  # uid
            b"0000000\0",  # gid
            b"%011o\0" % size,
            b"00000000000\0",  # mtime 0
            b" " * 8,  # checksum placeholder
            b"0",  # regular file
            b"\0" * 100,  # linkname
            b"ustar\x0000",
            TAR_OWNER.encode().ljust(32, b"\0"),
            TAR_OWNER.encode().ljust(32, b"\0"),
            b"\0" * 16,  # devmajor, devminor: empty for regular files, as tarfile writes them
            b"\0" * 155,  # prefix
            b"\0" * 12,
        )
    )
    checksum = b"%06o\0 " % sum(header)
    return header[:148] + checksum + header[156:]


class ShardTarWriter:
    """Streams samples into a WebDataset tar file with fixed headers (memory: one sample at a time).

    The tar is written directly (header, data, zero padding; two zero blocks and padding to 10 KiB at the
    end, as ``tarfile`` does): ``tarfile.addfile`` costs more per member than encoding a small JPEG's
    headers should. ``tests/pipeline`` checks the bytes against ``tarfile``'s own output.
    """

    def __init__(self, path: str) -> None:
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._offset = 0
        self.count = 0
        self.bytes = 0

    def _add(self, name: str, data: bytes) -> None:
        pad = -len(data) % 512
        self._file.write(ustar_header(name, len(data)))
        self._file.write(data)
        if pad:
            self._file.write(b"\0" * pad)
        self._offset += 512 + len(data) + pad

    def write(self, key: str, jpeg: bytes, class_index: int, meta: dict[str, Any]) -> None:
        parts = {
            "cls": str(class_index).encode(),
            "jpg": jpeg,
            "json": json.dumps(meta, sort_keys=True, separators=(",", ":")).encode(),
        }
        for ext in sorted(parts):
            data = parts[ext]
            self._add(f"{key}.{ext}", data)
            self.bytes += len(data)
        self.count += 1

    def close(self) -> None:
        if self._file.closed:
            return
        end = self._offset + 1024
        self._file.write(b"\0" * (1024 + (-end % tarfile.RECORDSIZE)))
        self._file.close()
