"""The guest agent wire format: the single source for host and guest.

A frame is a 4-byte big-endian length, then one byte of kind, then the
payload; the length counts the kind byte and the payload.

* kind ``J``: a JSON object. Requests carry ``id`` and ``type``, responses
  echo ``id`` with ``ok`` and ``result`` or ``error``, events have
  ``event`` and no ``id``.
* kind ``D``: bytes of a tunnelled stream: a 4-byte big-endian stream id,
  then data.

A frame longer than MAX_FRAME, an unknown kind or a JSON payload that is
not an object is a protocol error: the receiver answers with an error
frame and closes that connection only.

Sessions. The host opens each session with ``{"type": "hello", "nonce":
N}``; the guest answers with the frame ``{"sync": N}`` (see sync_frame).
Over virtio-serial the guest may have written into a session the host has
already left, so the host drops every byte before that exact frame.

Streams (tunnels). The host opens a stream with the request ``{"type":
"tunnel", "stream": S, "proto": "tcp"|"udp"|"unix", "host", "port" |
"path"}``; host streams have even ids, guest-initiated ones odd ids. Data
flows in ``D`` frames (for UDP one datagram per frame). Flow control is by
credit: each side may have at most WINDOW unacknowledged bytes in flight
per stream, and the receiver grants more with ``{"type": "window",
"stream": S, "bytes": n}`` once it has handed data on. ``{"type": "eof",
"stream": S}`` ends one direction; ``{"type": "reset", "stream": S,
"error": ...}`` aborts the stream. None of these carry an ``id``.

Exec (dev only; roost_guest.execute). The host asks ``{"type": "exec",
"id", "stream": S, "stderr": E, "argv", "seconds" (a time limit), "tty",
"rows", "cols", "term"}``; the guest answers ``{"pid"}`` once the command runs, or
``{"error", "exitCode"}`` (127, 126) when it cannot. Stream S carries stdin
to the guest and stdout back; E carries stderr. With ``"tty": true`` there
is no E and S is the terminal, both ways. Streams, windows and eof are as
for tunnels. After the output ends comes ``{"event": "exit", "stream": S,
"exitCode", "signal", "timedOut", "killed", "seconds"}``. The host may send
``{"type": "exec-signal" | "exec-kill", "stream": S, "signal": NAME}``
(NAME from EXEC_SIGNALS; a kill turns into SIGKILL after a grace) and
``{"type": "exec-resize", "stream": S, "rows", "cols"}``; a reset of S, or
the end of the session, kills the command.

Standard library only, and Python 3.8 compatible: it runs in the guest.
"""

from __future__ import annotations

import json
import struct

TYPE_CHECKING = False  # typing costs ~70 ms of guest boot under TCG
if TYPE_CHECKING:
    from typing import Any, Dict, List, Union

MAX_FRAME = 256 * 1024
KIND_JSON = b"J"
KIND_DATA = b"D"
_HEADER = struct.Struct(">I")
_STREAM = struct.Struct(">I")
HEADER_SIZE = _HEADER.size
# Data frames carry at most this much so that one stream's chunk never
# holds the channel long and never exceeds MAX_FRAME.
MAX_DATA_CHUNK = MAX_FRAME - 1 - _STREAM.size

# Credit per stream and direction; bounds memory per stream on both sides.
WINDOW = 1024 * 1024
# Data frames are cut at this size so that streams interleave fairly.
DATA_CHUNK = 128 * 1024

# Signals the host may send to a command's session (exec-signal, exec-kill).
EXEC_SIGNALS = ("HUP", "INT", "QUIT", "KILL", "USR1", "USR2", "TERM", "CONT", "STOP", "TSTP",
                "WINCH")

# Hybrid vsock (Firecracker, Cloud Hypervisor): the host writes
# "CONNECT <port>\n" to the VMM's Unix socket and reads "OK <port>\n".
VSOCK_PORT = 52


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame."""


class JsonMessage:
    __slots__ = ("obj",)

    def __init__(self, obj: Dict[str, Any]) -> None:
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JsonMessage) and other.obj == self.obj

    def __repr__(self) -> str:
        return "JsonMessage(%r)" % (self.obj,)


class StreamData:
    __slots__ = ("data", "stream_id")

    def __init__(self, stream_id: int, data: bytes) -> None:
        self.stream_id = stream_id
        self.data = data

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, StreamData)
            and other.stream_id == self.stream_id
            and other.data == self.data
        )

    def __repr__(self) -> str:
        return "StreamData(%d, %d bytes)" % (self.stream_id, len(self.data))


if TYPE_CHECKING:
    Message = Union[JsonMessage, StreamData]


def encode_json(obj: Dict[str, Any]) -> bytes:
    body = KIND_JSON + json.dumps(obj, separators=(",", ":")).encode("utf-8")
    if len(body) > MAX_FRAME:
        raise ProtocolError("JSON message of %d bytes exceeds the frame limit" % len(body))
    return _HEADER.pack(len(body)) + body


def encode_data(stream_id: int, data: bytes) -> bytes:
    if len(data) > MAX_DATA_CHUNK:
        raise ProtocolError("data chunk of %d bytes exceeds %d" % (len(data), MAX_DATA_CHUNK))
    body = KIND_DATA + _STREAM.pack(stream_id) + data
    return _HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> Message:
    kind = body[:1]
    if kind == KIND_JSON:
        try:
            obj = json.loads(body[1:].decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ProtocolError("malformed JSON frame: %s" % e) from None
        if not isinstance(obj, dict):
            raise ProtocolError("JSON frame is not an object")
        return JsonMessage(obj)
    if kind == KIND_DATA:
        if len(body) < 1 + _STREAM.size:
            raise ProtocolError("data frame too short for a stream id")
        (stream_id,) = _STREAM.unpack_from(body, 1)
        return StreamData(stream_id, bytes(body[1 + _STREAM.size :]))
    raise ProtocolError("unknown frame kind %r" % (kind,))


def check_length(length: int) -> None:
    if length > MAX_FRAME:
        raise ProtocolError("frame of %d bytes exceeds the limit of %d" % (length, MAX_FRAME))
    if length < 1:
        raise ProtocolError("empty frame")


def parse_length(header: bytes) -> int:
    (length,) = _HEADER.unpack(header)
    check_length(length)
    return int(length)


class FrameDecoder:
    """Incremental decoder: feed bytes as they arrive, get whole messages.

    After a ProtocolError the decoder is poisoned: the stream has lost its
    frame boundaries and the connection must be closed.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._failed = False

    def feed(self, data: bytes) -> List[Message]:
        if self._failed:
            raise ProtocolError("connection already failed")
        self._buf += data
        out: List[Message] = []
        while len(self._buf) >= HEADER_SIZE:
            try:
                length = parse_length(bytes(self._buf[:HEADER_SIZE]))
            except ProtocolError:
                self._failed = True
                raise
            if len(self._buf) < HEADER_SIZE + length:
                break
            body = bytes(self._buf[HEADER_SIZE : HEADER_SIZE + length])
            del self._buf[: HEADER_SIZE + length]
            try:
                out.append(decode_body(body))
            except ProtocolError:
                self._failed = True
                raise
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


# Guest paths a mount may never cover (the mount request's contract; the
# host checks before attaching a device, the guest again before mounting).
SYSTEM_DIRS = ("/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/root",
               "/run", "/sbin", "/sys", "/usr", "/var", "/mnt/cidata")
_NO_SUBDIRS = ("/dev", "/proc", "/sys", "/mnt/cidata")


def guest_mount_point_problem(path: object) -> str:
    """Why `path` cannot be a mount point ("" when it can)."""
    if not isinstance(path, str) or not path.startswith("/"):
        return "the guest path must be absolute, got %r" % (path,)
    if "\0" in path or "\n" in path:
        return "the guest path contains a NUL or newline"
    norm = "/" + "/".join(p for p in path.split("/") if p and p != ".")
    if ".." in norm.split("/"):
        return "the guest path must not contain '..'"
    if norm in SYSTEM_DIRS or any(norm.startswith(d + "/") for d in _NO_SUBDIRS):
        return "%s is a system directory; choose another guest path" % norm
    return ""


def sync_frame(nonce: int) -> bytes:
    """The exact bytes that start a session's valid data (see module doc)."""
    return encode_json({"sync": nonce})


def vsock_connect_line(port: int = VSOCK_PORT) -> bytes:
    return b"CONNECT %d\n" % port


def parse_vsock_ok(line: bytes) -> int:
    """Parse the VMM's answer to CONNECT; return the host-side port."""
    text = line.decode("ascii", "replace").strip()
    parts = text.split()
    if len(parts) != 2 or parts[0] != "OK" or not parts[1].isdigit():
        raise ProtocolError("hybrid vsock handshake failed: %r" % text)
    return int(parts[1])
