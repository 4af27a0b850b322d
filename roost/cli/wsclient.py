"""A small WebSocket client (RFC 6455) for the host agent's Unix socket.

Standard library only, so that `roost exec` starts fast. connect() does
the blocking handshake; after it the caller owns the socket's I/O
(roost.cli.execclient runs a select loop) and frames messages with
encode() and FrameReader. Client frames are masked, as the RFC requires.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import struct
from pathlib import Path

from roost.errors import RoostError, UsageError

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_HEAD = 64 * 1024
MAX_MESSAGE = 16 * 1024 * 1024


class WebSocketError(RoostError):
    """The host agent broke the WebSocket protocol."""


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def connect(path: Path, resource: str, timeout: float = 10.0) -> tuple[socket.socket, bytes]:
    """Connect and upgrade; the socket and the bytes read past the handshake.

    An HTTP answer other than 101 raises its error, as roost.ops.hostapi does."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
        key = base64.b64encode(os.urandom(16))
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n" % (resource.encode(), key))
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            if not data or len(buf) > _MAX_HEAD:
                raise WebSocketError("the host agent ended the WebSocket handshake")
            buf += data
        head, rest = buf.split(b"\r\n\r\n", 1)
        status, headers = _parse_head(head)
        if status != 101:
            length = int(headers.get("content-length", "0") or 0)
            while len(rest) < length and (data := sock.recv(65536)):
                rest += data
            _raise_http_error(status, rest)
        if headers.get("sec-websocket-accept", "").encode() != accept_key(key):
            raise WebSocketError("the host agent's WebSocket handshake has a wrong accept key")
    except OSError as e:
        sock.close()
        raise RoostError(f"cannot reach the host agent at {path}: {e}") from None
    except BaseException:
        sock.close()
        raise
    sock.settimeout(None)
    return sock, rest


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise WebSocketError(f"not an HTTP answer: {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


def _raise_http_error(status: int, body: bytes) -> None:
    if status == 405:  # a host agent from before WebSocket endpoints
        raise RoostError("this instance's host agent is older than this roost and cannot "
                         "serve it; restart the instance (roost stop, roost start)")
    try:
        message = str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        message = body.decode(errors="replace") or f"HTTP status {status}"
    if status in (400, 403, 404):
        raise UsageError(message)
    raise RoostError(message)


def _mask(data: bytes, key: bytes) -> bytes:
    """XOR with the repeated key, a whole message at a time (fast in C)."""
    n = len(data)
    if not n:
        return b""
    pad = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(pad, "little")).to_bytes(n, "little")


def encode(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    key = os.urandom(4)
    return head + key + _mask(payload, key)


def encode_text(obj: object) -> bytes:
    return encode(OP_TEXT, json.dumps(obj).encode())


def encode_close(code: int = 1000) -> bytes:
    return encode(OP_CLOSE, struct.pack("!H", code))


class FrameReader:
    """Whole messages from the bytes the server sends: (opcode, payload).

    Fragments are joined; control frames (close, ping, pong) come as they are."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._parts: list[bytes] = []
        self._opcode = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        out = []
        while (frame := self._next_frame()) is not None:
            fin, opcode, payload = frame
            if opcode >= OP_CLOSE:
                out.append((opcode, payload))
                continue
            if opcode != OP_CONT:
                if self._parts:
                    raise WebSocketError("a new WebSocket message inside a fragmented one")
                self._opcode = opcode
            elif not self._parts:
                raise WebSocketError("a WebSocket continuation frame without a message")
            self._parts.append(payload)
            if sum(len(p) for p in self._parts) > MAX_MESSAGE:
                raise WebSocketError("a WebSocket message larger than 16 MiB")
            if fin:
                out.append((self._opcode, b"".join(self._parts)))
                self._parts = []
        return out

    def _next_frame(self) -> tuple[bool, int, bytes] | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        fin, opcode = bool(buf[0] & 0x80), buf[0] & 0x0F
        if buf[0] & 0x70:
            raise WebSocketError("a WebSocket frame with reserved bits (no extension agreed)")
        masked, n = bool(buf[1] & 0x80), buf[1] & 0x7F
        at = 2
        if n == 126:
            if len(buf) < 4:
                return None
            (n,), at = struct.unpack_from("!H", buf, 2), 4
        elif n == 127:
            if len(buf) < 10:
                return None
            (n,), at = struct.unpack_from("!Q", buf, 2), 10
        if n > MAX_MESSAGE:
            raise WebSocketError("a WebSocket frame larger than 16 MiB")
        key = b""
        if masked:  # servers do not mask, but the RFC lets a reader cope
            if len(buf) < at + 4:
                return None
            key, at = bytes(buf[at:at + 4]), at + 4
        if len(buf) < at + n:
            return None
        payload = bytes(buf[at:at + n])
        del buf[:at + n]
        return fin, opcode, _mask(payload, key) if masked else payload
