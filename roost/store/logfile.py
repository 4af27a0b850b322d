"""The host agent's logs (ha.stdout.log: events, ha.stderr.log), kept bounded.

Past MAX_BYTES a log is renamed to NAME.1 (replacing the older one) and a
new file takes over the process's stdout or stderr (dup2), so whatever
writes there, logging, print or a traceback, goes on into the new file.
A reader (Follower) keeps its file open: after a rename it reads the old
file to its end, then goes on in the new one; nothing is lost or doubled.

Stdlib only: the CLI reads these logs.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import BinaryIO, TextIO

MAX_BYTES = 8 << 20  # per file; with NAME.1 a log takes at most twice that


def previous(path: Path) -> Path:
    """Where a log's older part goes when it is rotated."""
    return path.with_name(path.name + ".1")


def start_afresh(path: Path) -> None:
    """Before a new run writes the log: the last run's, older part too, are
    removed (not truncated: a Follower of the old file then sees a new one)."""
    path.unlink(missing_ok=True)
    previous(path).unlink(missing_ok=True)


class Rotation:
    """The log file behind one of this process's standard streams."""

    def __init__(self, stream: TextIO, path: Path, max_bytes: int = MAX_BYTES) -> None:
        self.stream = stream
        self.path = path
        self.max_bytes = max_bytes

    @classmethod
    def of(cls, stream: TextIO, path: Path, max_bytes: int = MAX_BYTES) -> Rotation | None:
        """None unless `stream` writes to `path` (not to a terminal or a pipe)."""
        try:
            ours, file = os.fstat(stream.fileno()), os.stat(path)
        except (OSError, ValueError):
            return None
        if (ours.st_dev, ours.st_ino) != (file.st_dev, file.st_ino):
            return None
        return cls(stream, path, max_bytes)

    def check(self) -> bool:
        """Rotate if the file has reached max_bytes; whether it did. Called by
        the stream's one writer after a write, so no write falls between."""
        fd = self.stream.fileno()
        if os.fstat(fd).st_size < self.max_bytes:
            return False
        self.stream.flush()
        # The old file linked as NAME.1, then the new one renamed over NAME:
        # a reader opening NAME never finds it missing.
        older, fresh = previous(self.path), self.path.with_name(self.path.name + ".new")
        older_tmp = older.with_name(older.name + ".new")
        older_tmp.unlink(missing_ok=True)
        os.link(self.path, older_tmp)
        os.replace(older_tmp, older)
        new = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        try:
            os.replace(fresh, self.path)
            os.dup2(new, fd)
        finally:
            os.close(new)
        return True


class Follower:
    """What is appended to a log, read as it comes: across a rotation, and
    from the start again when the file is truncated (a new run rewrote it)."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self._offset = offset  # where to start in the first file opened
        self._file: BinaryIO | None = None

    def read(self) -> bytes:
        if self._file is None:
            try:
                self._file = open(self.path, "rb")  # noqa: SIM115 - kept open across reads
            except FileNotFoundError:
                return b""
            self._file.seek(self._offset)
        data = self._file.read()
        here = os.fstat(self._file.fileno())
        if here.st_size < self._file.tell():  # truncated
            self._file.seek(0)
            data += self._file.read()
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return data
        if (now.st_dev, now.st_ino) != (here.st_dev, here.st_ino):  # rotated
            data += self._file.read()  # the old file's last lines
            self._file.close()
            self._file, self._offset = None, 0
            data += self.read()
        return data

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def tail(path: Path, lines: int) -> tuple[bytes, int]:
    """The last `lines` lines of a log (from NAME.1 too, when the current file
    has fewer), and the current file's size: where following it starts."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return b"", 0
    size = len(data)
    if data.count(b"\n") < lines:
        with contextlib.suppress(FileNotFoundError):
            data = previous(path).read_bytes() + data
    kept = data.splitlines(keepends=True)[-lines:] if lines > 0 else []
    return b"".join(kept), size
