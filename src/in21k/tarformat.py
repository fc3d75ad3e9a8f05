"""The tar format: the one module that writes and parses tar headers.

Every tar the product touches goes through here:

- the shards ``prepare`` writes (``in21k.dataset.ShardTarWriter`` builds them from ``ustar_header``,
  ``padding`` and ``end_of_archive``): ustar headers with fixed mode, owner, group and mtime, so the same
  inputs give byte-identical shards;
- the shards the loader streams (``tar_members``): ``(name, data)`` of each regular file, in order;
- the class tars of the raw release, indexed from their headers alone (``member_offsets``): name, byte
  offset of the data and size of each regular file, without reading any member data.

A header is one 512-byte block (the ``HEADER`` offsets below); member data follows it, padded with zeros to a
multiple of 512 bytes; an archive ends with two zero blocks, padded to a 10 KiB record. Number fields are
octal ASCII (GNU tars store sizes over 8 GiB in base 256); the checksum is the unsigned byte sum of the
header with its own field counted as eight spaces. Names longer than 100 bytes come as a ``prefix`` field
(ustar), a GNU ``L`` record or a pax ``x`` record ahead of the member.

Why not ``tarfile`` or webdataset: reading, ``tarfile`` costs about 20 us per member in Python and
webdataset (which uses it) about five times our per-sample cost (``in21k bench tar``, docs/benchmarks.md);
writing, ``tarfile.addfile`` costs more per member than encoding a small JPEG's headers should. The
formats stay the standard ones: ``tarfile`` and webdataset read our shards, our reader reads theirs, and
the index scanner hands anything unusual to ``tarfile`` (docs/design.md, "Why our own tar code").
"""

from __future__ import annotations

import re
import tarfile
import zlib
from collections.abc import Callable, Iterator
from typing import IO, Any

import numpy as np

from in21k.errors import DataError

BLOCK = 512
RECORD = tarfile.RECORDSIZE  # 10 KiB: an archive's length is a multiple of it, as tarfile writes them
OWNER = "in21k"  # user and group name of every member of our shards

# Byte ranges of a header's fields (POSIX ustar).
NAME = slice(0, 100)
SIZE = slice(124, 136)
CHECKSUM = slice(148, 156)
TYPE = slice(156, 157)
MAGIC = slice(257, 262)
PREFIX = slice(345, 500)

REGULAR_TYPES = (b"0", b"\0", b"7")  # regular files as tarfile counts them (sparse "S" is left to tarfile)
_NO_DATA_TYPES = (b"1", b"2", b"3", b"4", b"5", b"6")  # links, devices, directories, fifos


class TarFormatError(DataError):
    """The bytes are not a (complete) tar archive."""


# ----------------------------------------------------------------------------------------- writing
def ustar_header(name: str, size: int) -> bytes:
    """The 512-byte ustar header of a regular file with our fixed fields (what ``tarfile`` writes, faster)."""
    raw = name.encode("utf-8")
    if len(raw) > 100:
        raise DataError(f"tar member name longer than 100 bytes: {name!r}")
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
            OWNER.encode().ljust(32, b"\0"),
            OWNER.encode().ljust(32, b"\0"),
            b"\0" * 16,  # devmajor, devminor: empty for regular files, as tarfile writes them
            b"\0" * 155,  # prefix
            b"\0" * 12,
        )
    )
    checksum = b"%06o\0 " % sum(header)
    return header[:148] + checksum + header[156:]


def padding(size: int) -> bytes:
    """The zeros that follow ``size`` bytes of member data, up to the next block."""
    return b"\0" * (-size % BLOCK)


def end_of_archive(offset: int) -> bytes:
    """What ends an archive whose members fill ``offset`` bytes: two zero blocks, then zeros to a whole record."""
    return b"\0" * (2 * BLOCK + (-(offset + 2 * BLOCK) % RECORD))


# ----------------------------------------------------------------------------------------- streaming read
def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for sizes over 8 GiB
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise TarFormatError(f"bad number field {field!r} in a tar header") from None


def _pax_records(data: bytes) -> dict[str, str]:
    """The ``key=value`` records of a pax extended header (each ``LENGTH key=value\\n``)."""
    out, pos = {}, 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def tar_members(stream: IO[bytes]) -> Iterator[tuple[str, bytes]]:
    """``(name, data)`` of the regular files of a tar stream, in order (ustar, GNU and pax headers).

    Each header and each member is one buffered ``read`` (~3 us per member, where ``tarfile``'s streaming
    mode costs ~20 us: ~8% of a 224 px decode and augmentation per three-member sample). Checksums are
    verified; a short read raises ``EOFError``, bytes that are not a tar ``TarFormatError``.
    """
    long_name: bytes | None = None
    pax: dict[str, str] = {}
    read, octal, adler32 = stream.read, _octal, zlib.adler32
    while True:
        header = read(BLOCK)
        if len(header) < BLOCK:
            if not header:
                return  # a stream cut exactly at a member boundary: tarfile accepts it too
            raise EOFError("tar stream ends inside a header")
        if header.count(0) == BLOCK:
            return  # end-of-archive block
        # The checksum is the byte sum of the header with its own field read as 8 spaces (8 x 32 = 256).
        # adler32's low 16 bits are (1 + byte sum) mod 65521, computed in C (sum() over 512 bytes costs
        # ~2 us); a header sum is at most 130,560, so only an error of exactly +-65,521 could go unnoticed.
        field = header[CHECKSUM]
        if (octal(field) + sum(field) - 255 - (adler32(header) & 0xFFFF)) % 65521:
            raise TarFormatError("tar header checksum mismatch (not a tar file, or corrupt)")
        size = int(pax["size"]) if "size" in pax else octal(header[SIZE])
        kind = header[TYPE]
        data = read(size)
        if len(data) < size:
            raise EOFError(f"tar stream ends inside a member ({len(data)} of {size} bytes)")
        pad = -size % BLOCK
        if pad and len(read(pad)) < pad:
            raise EOFError("tar stream ends inside member padding")
        if kind == b"L":  # GNU long name of the next member
            long_name = data.rstrip(b"\0")
            continue
        if kind == b"x":  # pax extended header of the next member
            pax = _pax_records(data)
            continue
        if kind not in REGULAR_TYPES:  # directories, links, global pax headers...: no sample data
            long_name, pax = None, {}
            continue
        if long_name is None and not pax and header[345] == 0:  # the common case: a short ustar or v7 name
            name = header[NAME].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        else:
            name = _member_name(header, long_name, pax)
        long_name, pax = None, {}
        yield name, data


def _member_name(header: bytes, long_name: bytes | None, pax: dict[str, str]) -> str:
    """A member's name where a pax record, a GNU long name or a ustar prefix may give it."""
    if "path" in pax:
        return pax["path"]
    ustar = header[MAGIC] == b"ustar"
    if long_name is None and (header[345] == 0 or not ustar):  # the common case: no prefix
        return header[NAME].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    raw = long_name or header[NAME].split(b"\0", 1)[0]
    prefix = header[PREFIX].split(b"\0", 1)[0] if ustar and not long_name else b""
    return (prefix + b"/" + raw if prefix else raw).decode("utf-8", "surrogateescape")


# ----------------------------------------------------------------------------------------- header scan
# Header scans read this much at a time (through fsspec's read-ahead cache on object stores).
SCAN_READ = 64 << 10
_OCTAL = re.compile(rb" *[0-7]*[ \0]*")  # the number fields tarfile reads as plain octal
# mode, uid, gid, mtime, devmajor, devminor: the same bytes in nearly every header of a tar, so checked once
_FIXED_FIELDS = ((100, 108), (108, 116), (116, 124), (136, 148), (329, 337), (337, 345))

Member = tuple[str, int, int]  # name, byte offset of its data, size


def member_offsets(
    fileobj: Any, length: int, *, read_failure: Callable[[OSError], bool] | None = None
) -> tuple[list[Member], str]:
    """``(name, data offset, size)`` of each regular file of the archive in ``fileobj`` (``length`` bytes, seekable),
    from its headers alone, and an error text (empty for a sound archive).

    A plain ustar/v7 archive is parsed directly (``scan_plain``); anything else is read by ``tarfile``
    (``scan_tolerant``), so the result never depends on which path ran. A damaged archive keeps the members
    before the damage; an ``OSError`` for which ``read_failure`` is true is a failed read, not damage, and raises.
    """
    found = scan_plain(fileobj, length)
    if found is not None:
        return found, ""
    fileobj.seek(0)
    return scan_tolerant(fileobj, read_failure=read_failure)


def scan_plain(fileobj: Any, length: int) -> list[Member] | None:
    """``scan_tolerant``'s members for a plain ustar/v7 archive, from its headers read directly.

    About five times faster than ``tarfile`` (~5 us a member against ~25 us). Returns ``None`` at the first
    thing it does not handle exactly as ``tarfile`` would: GNU long names, pax or sparse headers, a name
    prefix, a bad checksum, an odd number field, a cut header or data past the end.
    """
    out: list[Member] = []
    headers: list[bytes] = []
    checksums: list[int] = []
    checked: set[bytes] = set()
    pos = 0
    buf = b""
    buf_start = 0
    while pos < length:
        if pos + BLOCK > buf_start + len(buf):
            fileobj.seek(pos)
            buf = fileobj.read(SCAN_READ)
            buf_start = pos
        at = pos - buf_start
        block = buf[at : at + BLOCK]
        if len(block) < BLOCK:
            return None
        if not block.strip(b"\0"):
            if not pos:
                return None  # an archive that starts with its end: tarfile decides
            break
        fixed = block[100:124] + block[136:148] + block[329:345]
        if fixed not in checked:
            if any(_OCTAL.fullmatch(block, a, b) is None for a, b in _FIXED_FIELDS):
                return None
            checked.add(fixed)
        if block[345] or _OCTAL.fullmatch(block, 124, 136) is None or _OCTAL.fullmatch(block, 148, 156) is None:
            return None
        headers.append(block)
        checksums.append(int(block[CHECKSUM].strip(b" \0") or b"0", 8))
        kind = block[TYPE]
        name = block[NAME].split(b"\0", 1)[0].decode(tarfile.ENCODING, "surrogateescape")
        if kind in REGULAR_TYPES and not (kind == b"\0" and name.endswith("/")):
            size = int(block[SIZE].strip(b" \0") or b"0", 8)
            out.append((name, pos + BLOCK, size))
            pos += BLOCK + -(-size // BLOCK) * BLOCK
            if pos > length:
                return None  # tarfile reports the cut ("unexpected end of data")
        elif kind in _NO_DATA_TYPES or kind == b"\0":
            pos += BLOCK
        else:
            return None
    if not pos:
        return None
    # Checksums of all headers at once (unsigned, the checksum field counted as spaces, as tarfile does).
    blocks = np.frombuffer(b"".join(headers), np.uint8).reshape(-1, BLOCK)
    sums = blocks.sum(axis=1, dtype=np.int64) - blocks[:, CHECKSUM].sum(axis=1, dtype=np.int64) + 256
    return out if np.array_equal(sums, np.asarray(checksums, np.int64)) else None


def scan_tolerant(fileobj: Any, *, read_failure: Callable[[OSError], bool] | None = None) -> tuple[list[Member], str]:
    """(name, data offset, size) of each regular file from headers alone (``tarfile`` seeks over the data).

    A damaged archive keeps the members read before the damage: ``(members, error)``. An ``OSError`` for which
    ``read_failure`` is true (the object store unreachable, say) is no damage and raises.
    """
    out: list[Member] = []
    try:
        tar = tarfile.open(fileobj=fileobj, mode="r:")
    except tarfile.TarError as exc:
        return out, f"not a tar archive: {exc}"
    try:
        while True:
            info = tar.next()
            if info is None:
                break
            if info.isfile():
                out.append((info.name, info.offset_data, info.size))
        # tarfile ends quietly at a bad header after the first; only zero blocks may follow a sound archive.
        fileobj.seek(tar.offset)
        if fileobj.read(BLOCK).strip(b"\0"):
            return out, f"damaged tar: unreadable header at byte {tar.offset} after {len(out)} members"
    except (tarfile.TarError, OSError) as exc:
        if read_failure is not None and isinstance(exc, OSError) and read_failure(exc):
            raise  # a failed read, not damage
        return out, f"damaged tar after {len(out)} members: {exc}"
    finally:
        tar.close()
    return out, ""
