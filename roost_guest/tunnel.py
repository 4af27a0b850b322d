"""Guest end of tunnelled streams: a local socket joined to a stream id.

Each stream has two threads. The reader takes bytes from the local socket
as far as the host's credit allows and sends them as data frames; the
writer hands the host's data to the local socket and then grants credit
back. Data from the host waits in a per-stream queue bounded by the window,
so one slow local peer never blocks the channel or the other streams.

Standard library only: runs in the guest.
"""

from __future__ import annotations

import collections
import contextlib
import threading

from roost_guest import lightsocket as socket
from roost_guest import protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Deque, Dict, Optional

    SendJson = Callable[[Dict[str, Any]], None]
    SendData = Callable[[int, bytes], None]

CONNECT_TIMEOUT = 5.0


class TunnelError(Exception):
    pass


def open_local(req: Dict[str, Any]) -> socket.socket:
    """Connect to what a tunnel request names, or raise TunnelError."""
    proto = req.get("proto")
    try:
        if proto == "unix":
            path = req.get("path")
            if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
                raise TunnelError("unix tunnel needs an absolute path")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(path)
        elif proto in ("tcp", "udp"):
            host, port = req.get("host"), req.get("port")
            if not isinstance(host, str) or "\0" in host or type(port) is not int \
                    or not 0 < port < 65536:
                raise TunnelError("%s tunnel needs host and port (1..65535)" % proto)
            kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, kind)
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect((host, port))
            if proto == "tcp":
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            raise TunnelError("unknown tunnel proto %r" % (proto,))
    except OSError as e:
        raise TunnelError("cannot connect to %s: %s" % (describe(req), e.strerror or e)) from None
    sock.settimeout(None)
    return sock


def describe(req: Dict[str, Any]) -> str:
    if req.get("proto") == "unix":
        return "unix:%s" % req.get("path")
    return "%s:%s:%s" % (req.get("proto"), req.get("host"), req.get("port"))


class Stream:
    def __init__(self, stream_id: int, sock: Optional[socket.socket], datagram: bool,
                 send_json: SendJson, send_data: SendData,
                 on_done: Callable[[int], None]) -> None:
        """`sock` None: a stream whose connect is under way (attach() joins
        it); it queues what the host sends, up to the window, meanwhile."""
        self.id = stream_id
        self._sock = sock
        self.datagram = datagram
        self._send_json = send_json
        self._send_data = send_data
        self._on_done = on_done
        self._cond = threading.Condition()
        self._credit = protocol.WINDOW
        self._queue: Deque[Optional[bytes]] = collections.deque()
        self._queued = 0
        self._closed = False
        self._read_done = False
        self._write_done = False

    @property
    def sock(self) -> socket.socket:
        assert self._sock is not None, "stream %d has no socket yet" % self.id
        return self._sock

    def attach(self, sock: socket.socket) -> bool:
        """The connect was made; False if the stream was reset meanwhile."""
        with self._cond:
            if self._closed:
                return False
            self._sock = sock
            return True

    def start(self) -> None:
        threading.Thread(target=self._read_loop, daemon=True).start()
        threading.Thread(target=self._write_loop, daemon=True).start()

    # -- from the host --------------------------------------------------

    def deliver(self, data: bytes) -> None:
        with self._cond:
            if self._closed:
                return
            if self._queued + len(data) > protocol.WINDOW:
                # The host broke flow control; refuse rather than grow.
                self._abort_locked("stream %d overran its window" % self.id)
                return
            self._queue.append(data)
            self._queued += len(data)
            self._cond.notify_all()

    def grant(self, n: int) -> None:
        with self._cond:
            self._credit += n
            self._cond.notify_all()

    def eof(self) -> None:
        with self._cond:
            self._queue.append(None)
            self._cond.notify_all()

    def reset(self) -> None:
        with self._cond:
            self._close_locked()

    # -- threads --------------------------------------------------------

    def _read_loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while self._credit <= 0 and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                    want = min(self._credit, protocol.DATA_CHUNK)
                try:
                    data = self.sock.recv(65535 if self.datagram else want)
                except OSError as e:
                    self._abort("read failed: %s" % e)
                    return
                if not data and not self.datagram:
                    self._send_json({"type": "eof", "stream": self.id})
                    break
                with self._cond:
                    self._credit -= len(data)
                self._send_data(self.id, data)
        except OSError:
            self._abort("")  # the channel is gone
            return
        with self._cond:
            self._read_done = True
            self._maybe_done_locked()

    def _write_loop(self) -> None:
        unacked = 0
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                data = self._queue.popleft()
                if data is not None:
                    self._queued -= len(data)
            if data is None:
                if not self.datagram:
                    with contextlib.suppress(OSError):
                        self.sock.shutdown(socket.SHUT_WR)
                with self._cond:
                    self._write_done = True
                    self._maybe_done_locked()
                return
            try:
                if self.datagram:
                    self.sock.send(data)
                else:
                    self.sock.sendall(data)
            except OSError as e:
                self._abort("write failed: %s" % e)
                return
            unacked += len(data)
            if unacked >= protocol.WINDOW // 4 or not self._queue:
                try:
                    self._send_json({"type": "window", "stream": self.id, "bytes": unacked})
                except OSError:
                    self._abort("")
                    return
                unacked = 0

    # -- ending ---------------------------------------------------------

    def _abort(self, error: str) -> None:
        with self._cond:
            self._abort_locked(error)

    def _abort_locked(self, error: str) -> None:
        if self._closed:
            return
        self._close_locked()
        if error:
            with contextlib.suppress(OSError):
                self._send_json({"type": "reset", "stream": self.id, "error": error})

    def _maybe_done_locked(self) -> None:
        if self._read_done and self._write_done:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._cond.notify_all()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv
            with contextlib.suppress(OSError):
                self._sock.close()
        self._on_done(self.id)
