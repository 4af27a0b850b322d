"""What a downloaded image is, from its bytes (never its name): compressed or
not, qcow2 or raw; and unpacking a compressed one.

zstd uses the `zstandard` package rather than the `zstd` program: it
streams in-process like gzip, lzma and bz2 from the standard library, so
every format goes through the same sparse writer and error handling, and
no extra host tool is needed.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
from contextlib import closing
from pathlib import Path
from typing import IO, Literal, Protocol

from roost.errors import RoostError

Compression = Literal["gzip", "xz", "zstd", "bzip2"]
DiskFormat = Literal["qcow2", "raw"]
CHUNK_BYTES = 1 << 20
QCOW2_MAGIC = b"QFI\xfb"
_COMPRESSION_MAGIC: list[tuple[bytes, Compression]] = [
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
]
# Formats qemu could open but roost does not take (or that are no disk at all):
# (offset, magic, what it is). A negative offset counts from the end.
_OTHER_FORMATS: list[tuple[int, bytes, str]] = [
    (0x8001, b"CD001", "an ISO 9660 (CD/installer) image"),
    (0x8801, b"CD001", "an ISO 9660 (CD/installer) image"),
    (0, b"KDMV", "a VMDK image"),
    (0, b"COWD", "a VMDK image"),
    (0, b"# Disk DescriptorFile", "a VMDK descriptor"),
    (0x40, b"\x7f\x10\xda\xbe", "a VirtualBox VDI image"),
    (0, b"vhdxfile", "a VHDX image"),
    (0, b"conectix", "a VHD image"),
    (-512, b"conectix", "a VHD image"),
    (0, b"QED\x00", "a QED image"),
    (257, b"ustar", "a tar archive (unpack it and use the disk image inside)"),
    (0, b"PK\x03\x04", "a zip archive (unpack it and use the disk image inside)"),
    (0, b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
]
_PRINTABLE = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D}


class ImageFormatError(RoostError):
    """The file is not a disk image roost can boot."""


def detect_compression(path: Path) -> Compression | None:
    with open(path, "rb") as f:
        head = f.read(8)
    for magic, kind in _COMPRESSION_MAGIC:
        if head.startswith(magic):
            if kind == "bzip2" and not head[3:4].isdigit():
                continue
            return kind
    return None


def _read_at(f: IO[bytes], offset: int, size: int, length: int) -> bytes:
    if offset < 0:
        offset += size
    if offset < 0 or offset + length > size:
        return b""
    f.seek(offset)
    return f.read(length)


def detect_disk_format(path: Path, where: str, self_contained: bool = True) -> DiskFormat:
    """qcow2 or raw, from the content. `self_contained`: a qcow2 that reads
    another file (backing file, external data file) is refused, as a
    downloaded image must not make QEMU open host paths it names."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(512)
        if not head:
            raise ImageFormatError(f"{where} is empty, not a disk image")
        if head.startswith(QCOW2_MAGIC):
            if self_contained:
                _check_qcow2_self_contained(head, where)
            return "qcow2"
        for offset, magic, what in _OTHER_FORMATS:
            if _read_at(f, offset, size, len(magic)) == magic:
                raise ImageFormatError(
                    f"{where} is {what}, not a disk image roost can boot; "
                    "images: takes qcow2 or raw disk images (optionally .xz/.gz/.zst/.bz2)")
    if all(b in _PRINTABLE for b in head):
        raise ImageFormatError(
            f"{where} is text, not a disk image (an error page?): {head[:60]!r}")
    return "raw"


def virtual_size(path: Path) -> int:
    """The size of the disk the guest sees: a qcow2's from its header."""
    with open(path, "rb") as f:
        head = f.read(32)
    if head.startswith(QCOW2_MAGIC) and len(head) == 32:
        return int(struct.unpack(">Q", head[24:32])[0])
    return path.stat().st_size


def _check_qcow2_self_contained(head: bytes, where: str) -> None:
    version, backing_offset = struct.unpack(">IQ", head[4:16])
    if backing_offset:
        raise ImageFormatError(f"{where} is a qcow2 image with a backing file; "
                               "roost needs a self-contained image")
    if version >= 3 and len(head) >= 80:
        (incompatible,) = struct.unpack(">Q", head[72:80])
        if incompatible & 0b100:
            raise ImageFormatError(f"{where} is a qcow2 image with an external data file; "
                                   "roost needs a self-contained image")


class _Reader(Protocol):
    def read(self, size: int, /) -> bytes: ...

    def close(self) -> None: ...


def _open_decompressed(src: IO[bytes], kind: Compression) -> _Reader:
    if kind == "gzip":
        return gzip.GzipFile(fileobj=src, mode="rb")
    if kind == "xz":
        return lzma.LZMAFile(src, "rb")
    if kind == "bzip2":
        return bz2.BZ2File(src, "rb")
    import zstandard  # only zstd images pay for it

    return zstandard.ZstdDecompressor().stream_reader(src, read_across_frames=True)


def _unpack_errors(kind: Compression) -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (OSError, EOFError, lzma.LZMAError, ValueError)
    if kind == "zstd":
        import zstandard

        errors += (zstandard.ZstdError,)
    return errors


def decompress(src: Path, dst: Path, kind: Compression, where: str) -> None:
    """Unpack `src` into `dst`, leaving runs of zeros as holes (disk images
    are mostly empty: a 2 GiB raw image may hold 300 MiB)."""
    zeros = bytes(CHUNK_BYTES)
    try:
        with open(src, "rb") as raw, closing(_open_decompressed(raw, kind)) as data, \
                open(dst, "wb") as out:
            size = 0
            while chunk := data.read(CHUNK_BYTES):
                size += len(chunk)
                if chunk == zeros[:len(chunk)]:
                    out.seek(len(chunk), 1)
                else:
                    out.write(chunk)
            out.truncate(size)
    except _unpack_errors(kind) as e:
        dst.unlink(missing_ok=True)
        raise ImageFormatError(f"{where}: cannot unpack the {kind} data: {e}") from None
    except BaseException:
        dst.unlink(missing_ok=True)
        raise
