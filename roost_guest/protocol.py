"""The guest agent wire format: the single source for host and guest.

A frame is a 4-byte big-endian length, then one byte of kind, then the
payload; the length counts the kind byte and the payload.

* kind ``J``: a JSON object. Requests carry ``id`` and ``type``, responses
  echo ``id`` with ``ok`` and ``result`` or ``error``, events have
  ``event`` and no ``id``.
* kind ``D``: bytes of a tunnelled stream: a 4-byte big-endian stream id,
  then data.

Two kinds of bad input. A frame longer than MAX_FRAME or of an unknown kind
loses the frame boundaries: the decoder fails for good (ProtocolError) and
the receiver closes that session only. A frame whose boundaries are intact
but whose content is no valid message (JSON that is malformed, not an
object or nested deeper than MAX_DEPTH; a data frame without a stream id)
decodes to a BadFrame: the guest answers it with an error reply, the host
drops it, and the session goes on. Fields are typed: ids, stream ids and
nonces are JSON integers (never booleans) in the ranges below.

Sessions. The host opens each session with ``{"type": "hello", "nonce":
N}``; the guest answers with the frame ``{"sync": N, "epoch": E}`` (see
sync_frame, find_sync). Over virtio-serial the guest may have written into
a session the host has already left, so the host drops every byte before
that frame. E names the guest side's session state: when the guest agent
(re)starts serving the virtio-serial port it announces a fresh epoch with
the event ``{"event": "started", "epoch": E}``; a host whose session has
another epoch knows that session is gone and opens a new one.

Streams (tunnels). The host opens a stream with the request ``{"type":
"tunnel", "stream": S, "proto": "tcp"|"udp"|"unix", "host", "port" |
"path"}``; host streams have even ids, guest-initiated ones odd ids. Data
flows in ``D`` frames (for UDP one datagram per frame; empty data frames
carry nothing and are ignored). Flow control is by credit: each side may
have at most WINDOW unacknowledged bytes in flight per stream, and the
receiver grants more with ``{"type": "window", "stream": S, "bytes": n}``
once it has handed data on. ``{"type": "eof", "stream": S}`` ends one
direction; ``{"type": "reset", "stream": S, "error": ...}`` aborts the
stream. None of these carry an ``id``.

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
``{"type": "exec-resize", "stream": S, "rows", "cols"}``; one with a wrong
field is answered ``{"event": "exec-refused", "stream": S, "error"}``, one
for a stream that is no command's is dropped. S and E are host streams
(even ids). A reset of S, or the end of the session, kills the command.

Files (guestAgent.allowFiles; roost_guest.files). ``files-stat``,
``files-list`` (entries as parts), ``files-mkdir``, ``files-remove`` and
``files-rename`` are answered in one reply. ``files-read`` {"path",
"stream": S} answers the file's stat, then its bytes come on S (credit as
for tunnels) and an eof. ``files-write`` {"path", "stream": S, "mode"}
answers, takes S's data until the host's eof, then sends {"event":
"files-written", "stream": S, "size" | "error"}; a reset of S abandons the
write. ``files-watch`` {"path", "recursive", "stream": S} sends {"event":
"files-change", "stream": S, "path", "kind"} until S is reset. S is a host
stream (even id).

Standard library only, and Python 3.8 compatible: it runs in the guest.
"""

from __future__ import annotations

import struct

from roost_guest import compactjson

TYPE_CHECKING = False  # typing costs ~70 ms of guest boot under TCG
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Tuple, TypeGuard, Union

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
# Written by the guest's boot (roost-boot) once its provisioning steps ran:
# "<boot id> <status> [<failed step>]"; read by the host over the channel
# (request boot-done) or, without the guest agent, over SSH.
BOOT_DONE_MARKER = "/run/roost/boot-done"

# Deeper JSON is refused on both sides: no message of ours nests beyond a
# handful of levels, and a bound far below the interpreter's recursion
# limit keeps every later walk of a message (encoding, logging) safe.
MAX_DEPTH = 64
# Ids, nonces and epochs stay exact in any JSON implementation (2**53).
MAX_ID = 2**53
MAX_STREAM_ID = 2**32 - 1  # what the data frame's 4-byte field holds
STREAM_CONTROL = ("window", "eof", "reset")
# Requests about a running command (see Exec above), answered by no reply.
EXEC_CONTROL = ("exec-signal", "exec-kill", "exec-resize")
# Events the guest sends about one host stream (see Exec above).
STREAM_EVENTS = ("exit", "exec-refused", "files-written", "files-change")
# A sync frame is {"sync": N, "epoch": E}: a few dozen bytes.
SYNC_MAX = 128


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


class BadFrame:
    """A whole frame that holds no valid message; the session goes on.

    `req_id` is the request's id when the frame was an object with a valid
    one (so that the error reply reaches the request), else None."""

    __slots__ = ("reason", "req_id")

    def __init__(self, reason: str, req_id: Optional[int] = None) -> None:
        self.reason = reason
        self.req_id = req_id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BadFrame) and other.reason == self.reason

    def __repr__(self) -> str:
        return "BadFrame(%r)" % (self.reason,)


if TYPE_CHECKING:
    Message = Union[JsonMessage, StreamData, BadFrame]


def is_int(value: object) -> TypeGuard[int]:
    """A JSON integer: Python's bool is an int, the wire's true is not."""
    return type(value) is int


def valid_id(value: object) -> TypeGuard[int]:
    """A request id (also what a nonce or an epoch may be)."""
    return type(value) is int and 0 <= value <= MAX_ID


def valid_stream_id(value: object, parity: Optional[int] = None) -> TypeGuard[int]:
    """A stream id that fits a data frame; parity 0: the host's, 1: the guest's."""
    if type(value) is not int or not 0 < value <= MAX_STREAM_ID:
        return False
    return parity is None or value % 2 == parity


def too_deep(obj: object, limit: int = MAX_DEPTH) -> bool:
    """Whether lists and objects in `obj` nest deeper than `limit` (no recursion)."""
    stack: List[Tuple[Any, int]] = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children: Any
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def _may_be_deep(text: Union[str, bytes]) -> bool:
    # Cheap first: nesting needs at least as many brackets as levels.
    if isinstance(text, str):
        return text.count("[") + text.count("{") > MAX_DEPTH
    return text.count(b"[") + text.count(b"{") > MAX_DEPTH


def encode_json(obj: Dict[str, Any]) -> bytes:
    """The frame for `obj`; ProtocolError when it cannot be one (too large,
    too deep, not JSON): the sender answers that with an error instead."""
    try:
        text = compactjson.dumps(obj)
    except (TypeError, ValueError, RecursionError) as e:
        raise ProtocolError("message cannot be encoded as JSON: %s" % e) from None
    body = KIND_JSON + text.encode("utf-8")
    if len(body) > MAX_FRAME:
        raise ProtocolError("JSON message of %d bytes exceeds the frame limit" % len(body))
    if _may_be_deep(text) and too_deep(obj):
        raise ProtocolError("JSON message nests deeper than %d levels" % MAX_DEPTH)
    return _HEADER.pack(len(body)) + body


def encode_data(stream_id: int, data: bytes) -> bytes:
    if len(data) > MAX_DATA_CHUNK:
        raise ProtocolError("data chunk of %d bytes exceeds %d" % (len(data), MAX_DATA_CHUNK))
    if not valid_stream_id(stream_id):
        raise ProtocolError("stream id %r does not fit a data frame" % (stream_id,))
    body = KIND_DATA + _STREAM.pack(stream_id) + data
    return _HEADER.pack(len(body)) + body


def decode_json(payload: bytes) -> Union[JsonMessage, BadFrame]:
    try:
        obj = compactjson.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        return BadFrame("malformed JSON frame: %s" % e)
    except RecursionError:
        return BadFrame("JSON frame nests deeper than %d levels" % MAX_DEPTH)
    if not isinstance(obj, dict):
        return BadFrame("JSON frame is not an object but %s" % type(obj).__name__)
    if _may_be_deep(payload) and too_deep(obj):
        req_id = obj.get("id")
        return BadFrame("JSON frame nests deeper than %d levels" % MAX_DEPTH,
                        req_id if valid_id(req_id) else None)
    return JsonMessage(obj)


def decode_body(body: bytes) -> Message:
    """One frame's message; ProtocolError only for an unknown kind."""
    kind = body[:1]
    if kind == KIND_JSON:
        return decode_json(body[1:])
    if kind == KIND_DATA:
        if len(body) < 1 + _STREAM.size:
            return BadFrame("data frame too short for a stream id")
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

    A frame that breaks the framing poisons the decoder: feed still returns
    the messages before it, and sets `error`; the stream has lost its frame
    boundaries and the connection must be closed (a later feed raises).
    What it had not consumed, from the failing frame's header on, stays in
    `unconsumed` (where the guest looks for the next session's hello).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.error: Optional[ProtocolError] = None
        self.frames = 0  # frames decoded, valid or not

    def feed(self, data: bytes) -> List[Message]:
        if self.error is not None:
            raise ProtocolError("connection already failed")
        self._buf += data
        out: List[Message] = []
        pos = 0
        try:
            while len(self._buf) - pos >= HEADER_SIZE:
                length = parse_length(bytes(self._buf[pos : pos + HEADER_SIZE]))
                end = pos + HEADER_SIZE + length
                if len(self._buf) < end:
                    break
                out.append(decode_body(bytes(self._buf[pos + HEADER_SIZE : end])))
                self.frames += 1
                pos = end
        except ProtocolError as e:
            self.error = e
        finally:
            del self._buf[:pos]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)

    @property
    def unconsumed(self) -> bytes:
        return bytes(self._buf)


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


def sync_frame(nonce: int, epoch: int) -> bytes:
    """The exact bytes that start a session's valid data (see module doc)."""
    return encode_json({"sync": nonce, "epoch": epoch})


def find_sync(buf: bytes, nonce: int) -> Tuple[int, Optional[int]]:
    """Where the sync frame for `nonce` ends in `buf`, and the epoch it carries.

    (-1, None) while no such whole frame is in `buf`: read more, keeping
    at least the last SYNC_MAX + HEADER_SIZE bytes (a frame may straddle
    reads). Anything else that merely looks like one is skipped."""
    mark = KIND_JSON + b'{"sync":%d' % nonce
    pos = HEADER_SIZE
    while True:
        at = buf.find(mark, pos)
        if at < 0:
            return -1, None
        pos = at + 1
        (length,) = _HEADER.unpack_from(buf, at - HEADER_SIZE)
        end = at + length
        if not len(mark) < length <= SYNC_MAX or end > len(buf):
            continue
        msg = decode_json(buf[at + 1 : end])
        if isinstance(msg, JsonMessage) and msg.obj.get("sync") == nonce \
                and is_int(msg.obj.get("sync")):
            epoch = msg.obj.get("epoch")
            return end, epoch if valid_id(epoch) else None


def vsock_connect_line(port: int = VSOCK_PORT) -> bytes:
    return b"CONNECT %d\n" % port


def parse_vsock_ok(line: bytes) -> int:
    """Parse the VMM's answer to CONNECT; return the host-side port."""
    text = line.decode("ascii", "replace").strip()
    parts = text.split()
    if len(parts) != 2 or parts[0] != "OK" or not parts[1].isdigit():
        raise ProtocolError("hybrid vsock handshake failed: %r" % text)
    return int(parts[1])
