"""Write an uncompressed newc cpio archive (the initramfs format).

Written here rather than by the `cpio` tool so that device nodes such as
/dev/console can be added without root and the archive is reproducible.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

_TRAILER = "TRAILER!!!"


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


class NewcWriter:
    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
               nlink: int = 1) -> None:
        encoded = name.encode() + b"\0"
        fields = [
            self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0,
        ]
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._ino += 1
        self._out.write(header + encoded + _pad(len(header) + len(encoded)))
        self._out.write(data + _pad(len(data)))

    def add_dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm, nlink=2)

    def add_file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def add_symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def add_char_device(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def add_tree(self, root: Path, prefix: str = "") -> None:
        """Add a directory tree with its modes (owner becomes root)."""
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, root)
            for name in sorted(dirnames) + sorted(filenames):
                path = Path(dirpath) / name
                rel = os.path.normpath(os.path.join(prefix, rel_dir, name))
                st = path.lstat()
                if stat.S_ISLNK(st.st_mode):
                    self.add_symlink(rel, os.readlink(path))
                elif stat.S_ISDIR(st.st_mode):
                    self.add_dir(rel, stat.S_IMODE(st.st_mode))
                elif stat.S_ISREG(st.st_mode):
                    self.add_file(rel, path.read_bytes(), stat.S_IMODE(st.st_mode))

    def close(self) -> None:
        self._entry(_TRAILER, 0)
