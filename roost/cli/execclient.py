"""`roost exec`'s end of the host agent's exec WebSocket (roost.hostagent.execws).

One select() loop, no threads, nothing that blocks: stdin goes out within
the credit the host agent grants, output is written as the terminal or
pipe takes it (and the socket is not read meanwhile, so a slow reader here
slows the command in the guest), signals arrive through a wake-up pipe.

Ctrl-C (SIGINT), SIGTERM and SIGHUP kill the command (that signal to its
whole session in the guest, then SIGKILL) and exit 128 + the signal, 130
for Ctrl-C, once the guest has confirmed the exit; a second one exits at
once. With a pty (-t) the local terminal is raw: Ctrl-C is a byte for the
remote terminal, as with ssh -t, and the exit status is the command's.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import select
import signal
import socket
import stat
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from roost.cli import wsclient
from roost.errors import RoostError, UsageError
from roost.hostagent.apimodels import ExecRequest

STDOUT, STDERR = 1, 2
READ_CHUNK = 64 * 1024
PIPE_CHUNK = 4096  # what a pipe that polls writable takes without blocking
OUT_LIMIT = 256 * 1024  # bytes queued for the socket before stdin is read again
KILL_WAIT = 5.0  # after a kill, how long to wait for the guest's exit
TIMEOUT_EXIT = 124
_STOP_SIGNALS: dict[int, str] = {signal.SIGINT: "INT", signal.SIGTERM: "TERM",
                                 signal.SIGHUP: "HUP"}


class ExecClient:
    def __init__(self, sock: socket.socket, leftover: bytes, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout
        self.reader = wsclient.FrameReader()
        self.leftover = leftover
        self.out = bytearray()  # frames for the socket
        self.writes: collections.deque[tuple[int, memoryview]] = collections.deque()
        self.credit = 0  # stdin bytes the host agent will take
        self.stdin_open = _fd_open(0)
        self.exit: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.stopped_by = 0  # the signal that killed the command
        self.stop_deadline = 0.0
        self.server_closed = False
        self.stdout_broken = False
        self._signals: list[int] = []

    # -- set-up ----------------------------------------------------------------

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)

    def send(self, frame: bytes) -> None:
        self.out += frame

    def send_control(self, obj: dict[str, Any]) -> None:
        self.send(wsclient.encode_text(obj))

    # -- the loop --------------------------------------------------------------

    def loop(self, wake_r: int) -> None:
        self.sock.setblocking(False)
        if self.leftover:
            self._on_bytes(self.leftover)
        stdout_regular = _is_regular(1)
        stderr_regular = _is_regular(2)
        while True:
            if (self.exit or self.error) and not self.writes:
                return
            if self.server_closed and not self.writes:
                return
            if self.stdout_broken:
                return
            now = time.monotonic()
            if self.stopped_by and now >= self.stop_deadline:
                return
            rlist: list[Any] = [wake_r]
            if not self.writes and not self.server_closed:
                rlist.append(self.sock)  # else wait: the output is not taken yet
            if self.stdin_open and self.credit > 0 and len(self.out) < OUT_LIMIT \
                    and not self.stopped_by:
                rlist.append(0)
            wlist: list[Any] = []
            if self.out and not self.server_closed:
                wlist.append(self.sock)
            if self.writes:
                wlist.append(self.writes[0][0])
            timeout = max(0.0, self.stop_deadline - now) if self.stopped_by else None
            readable, writable, _ = select.select(rlist, wlist, [], timeout)
            if wake_r in readable:
                with contextlib.suppress(OSError):
                    os.read(wake_r, 4096)
                self._handle_signals()
            if self.sock in readable:
                self._read_socket()
            if 0 in readable:
                self._read_stdin()
            if self.sock in writable:
                self._write_socket()
            if self.writes and self.writes[0][0] in writable:
                fd = self.writes[0][0]
                regular = stdout_regular if fd == STDOUT else stderr_regular
                self._write_output(READ_CHUNK if regular else PIPE_CHUNK)

    def _handle_signals(self) -> None:
        signals, self._signals = self._signals, []
        for signum in signals:
            if signum == signal.SIGWINCH:
                rows, cols = terminal_size()
                if rows and cols:
                    self.send_control({"type": "resize", "rows": rows, "cols": cols})
            elif self.stopped_by:  # a second one: leave now
                self.stop_deadline = 0.0
            else:
                self.stopped_by = signum
                self.stop_deadline = time.monotonic() + KILL_WAIT
                self.send_control({"type": "kill", "signal": _STOP_SIGNALS[signum]})

    def _read_socket(self) -> None:
        try:
            data = self.sock.recv(256 * 1024)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.server_closed = True
            return
        self._on_bytes(data)

    def _on_bytes(self, data: bytes) -> None:
        for opcode, payload in self.reader.feed(data):
            if opcode == wsclient.OP_BINARY and payload:
                fd = STDERR if payload[0] == 2 else STDOUT
                if len(payload) > 1:
                    self.writes.append((fd, memoryview(payload)[1:]))
            elif opcode == wsclient.OP_TEXT:
                self._on_message(json.loads(payload))
            elif opcode == wsclient.OP_PING:
                self.send(wsclient.encode(wsclient.OP_PONG, payload))
            elif opcode == wsclient.OP_CLOSE:
                self.server_closed = True  # run() answers it

    def _on_message(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind in ("started", "window"):
            self.credit += int(msg.get("window") or msg.get("bytes") or 0)
        elif kind == "exit":
            self.exit = msg
        elif kind == "error":
            self.error = msg

    def _read_stdin(self) -> None:
        try:
            data = os.read(0, min(self.credit, READ_CHUNK))
        except OSError:
            data = b""
        if not data:
            self.stdin_open = False
            self.send_control({"type": "eof"})
            return
        self.credit -= len(data)
        self.send(wsclient.encode(wsclient.OP_BINARY, data))

    def _write_socket(self) -> None:
        try:
            n = self.sock.send(self.out)
        except BlockingIOError:
            return
        except OSError:
            self.server_closed = True
            self.out.clear()
            return
        del self.out[:n]

    def _write_output(self, chunk: int) -> None:
        fd, view = self.writes[0]
        try:
            n = os.write(fd, view[:chunk])
        except BlockingIOError:
            return
        except OSError:  # EPIPE: nobody reads our output any more
            self.stdout_broken = True
            return
        if n == len(view):
            self.writes.popleft()
        else:
            self.writes[0] = (fd, view[n:])

    # -- the outcome -----------------------------------------------------------

    def status(self) -> int:
        if self.stopped_by:
            return 128 + self.stopped_by
        if self.stdout_broken:
            return 128 + signal.SIGPIPE
        if self.error is not None:
            message = str(self.error.get("error", "exec failed"))
            if "exitCode" in self.error:
                sys.stderr.write(f"roost exec: {message}\n")
                return int(self.error["exitCode"])
            if self.error.get("status") == 400:
                raise UsageError(message)
            raise RoostError(message)
        if self.exit is None:
            raise RoostError("the host agent ended the exec stream before the command's "
                             "exit status came (see roost logs NAME)")
        if self.exit.get("timedOut"):
            sys.stderr.write(f"roost exec: killed after {self.timeout:g}s\n")
            return TIMEOUT_EXIT
        return int(self.exit.get("exitCode", 1))


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _is_regular(fd: int) -> bool:
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


def terminal_size() -> tuple[int, int]:
    for fd in (0, 1):
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(fd)
            return size.lines, size.columns
    return 0, 0


def _term() -> str:
    term = os.environ.get("TERM", "")
    ok = len(term) <= 64 and term.isascii() and all(c.isalnum() or c in "-_.+" for c in term)
    return term if ok else ""


def run(ha_sock: Path, argv: list[str], timeout: float, tty: bool) -> int:
    """Run argv in the guest with our stdin and output; its exit status."""
    sock, leftover = wsclient.connect(ha_sock, "/v1/exec")
    rows, cols = terminal_size() if tty else (0, 0)
    spec = ExecRequest(argv=argv, timeout=timeout, tty=tty, rows=rows, cols=cols,
                       term=_term() if tty else "").wire()
    client = ExecClient(sock, leftover, timeout)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    caught = [*_STOP_SIGNALS, *([signal.SIGWINCH] if tty else [])]
    old_handlers = {s: signal.signal(s, client.on_signal) for s in caught}
    old_wakeup = signal.set_wakeup_fd(wake_w)
    restore_terminal = _raw_terminal() if tty else None
    try:
        sock.sendall(wsclient.encode_text(spec))
        client.loop(wake_r)
        with contextlib.suppress(OSError):  # the server may be gone already
            sock.settimeout(1.0)
            sock.sendall(bytes(client.out) + wsclient.encode_close())
    except OSError as e:
        raise RoostError(f"the exec stream to the host agent failed: {e}") from None
    finally:
        if restore_terminal is not None:
            restore_terminal()
        signal.set_wakeup_fd(old_wakeup)
        for s, handler in old_handlers.items():
            signal.signal(s, handler)
        os.close(wake_r)
        os.close(wake_w)
        sock.close()
    return client.status()


def _raw_terminal() -> Any:
    """Put a terminal on stdin in raw mode; a function that restores it (or None)."""
    if not os.isatty(0):
        return None
    import termios
    import tty

    saved = termios.tcgetattr(0)
    tty.setraw(0, termios.TCSADRAIN)  # not TCSAFLUSH: keep what was typed ahead

    def restore() -> None:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)

    return restore
