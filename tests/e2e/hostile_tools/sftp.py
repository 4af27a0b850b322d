"""A small SFTP (version 3) client over any byte transport: guest root's own
requests to the host's sftp-server, past sshfs and the guest's kernel.

`probe_read_only` and `probe_escapes` are the batteries the tests run: each
answer is the server's status name ("OK", "PERMISSION_DENIED", ...) or, for
a read, what came back.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

INIT, VERSION = 1, 2
OPEN, CLOSE, READ, WRITE, LSTAT, SETSTAT = 3, 4, 5, 6, 7, 9
OPENDIR, READDIR, REMOVE, MKDIR, RMDIR, REALPATH, RENAME, READLINK, SYMLINK = (
    11, 12, 13, 14, 15, 16, 18, 19, 20)
STATUS, HANDLE, DATA, NAME, ATTRS = 101, 102, 103, 104, 105
FXF_READ, FXF_WRITE, FXF_APPEND, FXF_CREAT, FXF_TRUNC = 1, 2, 4, 8, 0x10
ATTR_PERMISSIONS = 4
STATUS_NAMES = {0: "OK", 1: "EOF", 2: "NO_SUCH_FILE", 3: "PERMISSION_DENIED", 4: "FAILURE",
                5: "BAD_MESSAGE", 8: "OP_UNSUPPORTED"}
# Far from the ids sshfs uses, when we share its session.
FIRST_ID = 0x7F000000


class SftpError(Exception):
    pass


def string(data: bytes | str) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return struct.pack(">I", len(raw)) + raw


def packet(kind: int, body: bytes) -> bytes:
    return struct.pack(">IB", len(body) + 1, kind) + body


def init_packet() -> bytes:
    return packet(INIT, struct.pack(">I", 3))


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def u32(self) -> int:
        (value,) = struct.unpack_from(">I", self.data, self.pos)
        self.pos += 4
        return int(value)

    def u64(self) -> int:
        (value,) = struct.unpack_from(">Q", self.data, self.pos)
        self.pos += 8
        return int(value)

    def bytes_(self) -> bytes:
        n = self.u32()
        value = self.data[self.pos:self.pos + n]
        self.pos += n
        return value

    def attrs(self) -> dict[str, int]:
        flags = self.u32()
        out: dict[str, int] = {}
        if flags & 1:
            out["size"] = self.u64()
        if flags & 2:
            out["uid"], out["gid"] = self.u32(), self.u32()
        if flags & 4:
            out["mode"] = self.u32()
        if flags & 8:
            out["atime"], out["mtime"] = self.u32(), self.u32()
        if flags & 0x80000000:
            for _ in range(self.u32()):
                self.bytes_()
                self.bytes_()
        return out


class Sftp:
    """Requests one at a time; `send` writes bytes, `recv` returns the next
    bytes that arrived (b"" when the transport ended)."""

    def __init__(self, send: Callable[[bytes], None], recv: Callable[[], bytes]) -> None:
        self.send = send
        self.recv = recv
        self.buf = b""
        self.next_id = FIRST_ID

    def read_packet(self) -> tuple[int, bytes]:
        while len(self.buf) < 4 or len(self.buf) < 4 + struct.unpack_from(">I", self.buf)[0]:
            more = self.recv()
            if not more:
                raise SftpError("the transport ended")
            self.buf += more
        (length,) = struct.unpack_from(">I", self.buf)
        body, self.buf = self.buf[4:4 + length], self.buf[4 + length:]
        return body[0], body[1:]

    def init(self) -> int:
        """INIT; the server's version (VERSION is the proof it serves us)."""
        self.send(init_packet())
        kind, body = self.read_packet()
        if kind != VERSION:
            raise SftpError(f"answer to INIT is packet type {kind}")
        return Reader(body).u32()

    def call(self, kind: int, body: bytes) -> tuple[int, Reader]:
        req_id = self.next_id
        self.next_id += 1
        self.send(packet(kind, struct.pack(">I", req_id) + body))
        while True:
            answer, payload = self.read_packet()
            reader = Reader(payload)
            if reader.u32() == req_id:  # others were sshfs's (we share its session)
                return answer, reader

    def status(self, kind: int, body: bytes) -> str:
        answer, reader = self.call(kind, body)
        if answer == STATUS:
            code = reader.u32()
            return STATUS_NAMES.get(code, str(code))
        return "OK" if answer in (HANDLE, NAME, ATTRS, DATA) else f"packet {answer}"

    def open(self, path: str, flags: int, mode: int | None = None) -> tuple[str, bytes]:
        attrs = struct.pack(">II", ATTR_PERMISSIONS, mode) if mode is not None else b"\0" * 4
        answer, reader = self.call(OPEN, string(path) + struct.pack(">I", flags) + attrs)
        if answer == HANDLE:
            return "OK", reader.bytes_()
        return STATUS_NAMES.get(reader.u32(), "?"), b""

    def close(self, handle: bytes) -> None:
        self.call(CLOSE, string(handle))

    def read_file(self, path: str, limit: int = 65536) -> str | bytes:
        """The file's bytes, or the status name why not."""
        status, handle = self.open(path, FXF_READ)
        if status != "OK":
            return status
        answer, reader = self.call(READ, string(handle) + struct.pack(">QI", 0, limit))
        self.close(handle)
        if answer == DATA:
            return reader.bytes_()
        return b""  # EOF at once: an empty file

    def write_file(self, path: str, data: bytes, flags: int) -> str:
        status, handle = self.open(path, flags, 0o644)
        if status != "OK":
            return status
        answer, reader = self.call(WRITE, string(handle) + struct.pack(">Q", 0) + string(data))
        self.close(handle)
        return STATUS_NAMES.get(reader.u32(), "?") if answer == STATUS else f"packet {answer}"

    def listdir(self, path: str) -> list[str] | str:
        answer, reader = self.call(OPENDIR, string(path))
        if answer != HANDLE:
            return STATUS_NAMES.get(reader.u32(), "?")
        handle = reader.bytes_()
        names: list[str] = []
        while True:
            answer, reader = self.call(READDIR, string(handle))
            if answer != NAME:
                break
            for _ in range(reader.u32()):
                names.append(reader.bytes_().decode(errors="replace"))
                reader.bytes_()
                reader.attrs()
        self.close(handle)
        return sorted(n for n in names if n not in (".", ".."))

    def realpath(self, path: str) -> str:
        answer, reader = self.call(REALPATH, string(path))
        if answer != NAME or reader.u32() < 1:
            return "?"
        return reader.bytes_().decode(errors="replace")

    def lstat(self, path: str) -> dict[str, int] | str:
        answer, reader = self.call(LSTAT, string(path))
        if answer == ATTRS:
            return reader.attrs()
        return STATUS_NAMES.get(reader.u32(), "?")


def probe_read_only(sftp: Sftp, share: str, existing: str) -> dict[str, str]:
    """Every way SFTP has to change a share; each should be refused."""
    target = share + "/" + existing
    perms = struct.pack(">II", ATTR_PERMISSIONS, 0o4777)
    return {
        "create": sftp.write_file(share + "/by-guest-root", b"x", FXF_WRITE | FXF_CREAT),
        "overwrite": sftp.write_file(target, b"x", FXF_WRITE | FXF_TRUNC),
        "append": sftp.write_file(target, b"x", FXF_WRITE | FXF_APPEND),
        "mkdir": sftp.status(MKDIR, string(share + "/dir-by-guest") + b"\0" * 4),
        "remove": sftp.status(REMOVE, string(target)),
        "rename": sftp.status(RENAME, string(target) + string(target + ".moved")),
        "chmod-setuid": sftp.status(SETSTAT, string(target) + perms),
        # OpenSSH takes the target first, then the link's path.
        "symlink": sftp.status(SYMLINK, string("/") + string(share + "/link-by-guest")),
    }


def probe_escapes(sftp: Sftp, share: str, host_secret: str, links: list[str]) -> dict[str, Any]:
    """Paths that would leave the share on the host: what each gives. A
    file the host holds outside the share (`host_secret`, absolute), the
    same through `..`, symlinks in the share that point out, the root."""
    out: dict[str, Any] = {
        "root": sftp.listdir("/"),
        "realpath ..": sftp.realpath(share + "/../../.."),
        "absolute": _text(sftp.read_file(host_secret)),
        "dotdot": _text(sftp.read_file(share + "/../../../.." + host_secret)),
        "passwd": _text(sftp.read_file("/etc/passwd")),
        "proc": sftp.listdir("/proc"),
    }
    for link in links:
        out["via " + link] = _text(sftp.read_file(share + "/" + link))
    return out


def _text(data: str | bytes) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else data
