"""The loader's tar reader against Python's ``tarfile`` on every header flavour, and on broken input."""

from __future__ import annotations

import io
import tarfile

import pytest

from in21k.tarformat import TarFormatError, tar_members


def make_tar(fmt: int, members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        d = tarfile.TarInfo("adir")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


MEMBERS = [
    ("n01440764_0001.jpg", b"\xff\xd8" + bytes(range(256)) * 3 + b"\xff\xd9"),
    ("n01440764_0001.cls", b"0"),
    ("n01440764_0001.json", b"{}"),
    ("empty.txt", b""),
    ("exactly512.bin", b"x" * 512),
    ("deep/" + "p" * 120 + "/n02084071_0002.jpg", b"long path"),  # ustar prefix, GNU L or pax path
    ("caf\u00e9_0003.cls", b"7"),  # non-ASCII: pax stores it as a path record
]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_same_members_as_tarfile(fmt: int) -> None:
    members = MEMBERS if fmt != tarfile.USTAR_FORMAT else [m for m in MEMBERS if m[0].isascii()]
    raw = make_tar(fmt, members)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        expected = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    assert list(tar_members(io.BytesIO(raw))) == expected == members


def test_truncated_and_garbage_input_raise() -> None:
    raw = make_tar(tarfile.USTAR_FORMAT, MEMBERS[:3])
    with pytest.raises(EOFError):
        list(tar_members(io.BytesIO(raw[: 3 * 512 + 100])))  # inside a member's data
    with pytest.raises(EOFError):
        list(tar_members(io.BytesIO(raw[:300])))  # inside a header
    with pytest.raises(TarFormatError, match="tar header"):
        list(tar_members(io.BytesIO(b"this is not a tar file" * 40)))


def test_damaged_header_fails_its_checksum() -> None:
    raw = bytearray(make_tar(tarfile.USTAR_FORMAT, MEMBERS[:3]))
    second = 512  # after the directory's header (no data): the first member's header
    raw[second + 3] ^= 0x01  # one bit of the member's name
    with pytest.raises(TarFormatError, match="checksum mismatch"):
        list(tar_members(io.BytesIO(bytes(raw))))
    raw[second + 3] ^= 0x01
    raw[second + 130] ^= 0x40  # one bit of the size field
    with pytest.raises(TarFormatError, match="checksum mismatch"):
        list(tar_members(io.BytesIO(bytes(raw))))
