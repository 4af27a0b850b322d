"""Dev-only remote command: argv run in its own session, its stdin, stdout and
stderr carried over flow-controlled streams like tunnels.

Off unless the agent was started with --allow-exec (the instance config's
guestAgent.allowExec). Every run is appended to the audit log. No shell:
argv is passed to execve as it is. The wire format is in roost_guest.protocol.

The command leads a new session (its own process group), so that a kill
reaches everything it started, in every process group of that session: an
interactive shell puts each job in a group of its own.

One thread per run multiplexes its pipes (or its pty) with poll(), and a
second waits for the exit. Output is read only while the host has granted
credit, so a command that floods its output blocks in write() rather than
filling memory; stdin from the host waits in a queue bounded by the window.

Standard library only: runs in the guest.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import os
import select
import signal
import threading
import time

from roost_guest import protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

    SendJson = Callable[[Dict[str, Any]], None]
    SendData = Callable[[int, bytes], None]

AUDIT_LOG = "/var/log/roost/exec.log"
TIMEOUT_EXIT = 124  # as timeout(1)
KILL_GRACE = 2.0  # seconds from the first signal of a kill to SIGKILL
# After the command exits, children that still hold its output pipes may
# write on; the run ends once its output has been quiet this long.
QUIET_AFTER_EXIT = 2.0
_MAX_TERM = 64


class ExecError(Exception):
    """The request is invalid or the command could not start."""

    def __init__(self, message: str, exit_code: int = 0) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # as a shell would exit: 127 not found, 126 not runnable


class Spec:
    """A validated exec request."""

    def __init__(self, req: Dict[str, Any]) -> None:
        argv = req.get("argv")
        if not isinstance(argv, list) or not argv or not all(
                isinstance(a, str) and "\0" not in a for a in argv):
            raise ExecError("exec needs argv: a non-empty list of strings without NUL")
        self.argv: List[str] = argv
        self.stream = _stream_id(req.get("stream"), "stream")
        self.tty = req.get("tty") is True
        self.stderr: Optional[int] = None
        if not self.tty:
            self.stderr = _stream_id(req.get("stderr"), "stderr")
            if self.stderr == self.stream:
                raise ExecError("exec needs two different streams for stdout and stderr")
        timeout = req.get("seconds", 0)
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not (
                0 <= timeout < 1e9):
            raise ExecError("exec seconds (the time limit) must be a number >= 0")
        self.timeout = float(timeout)
        self.rows = _size(req.get("rows", 0), "rows")
        self.cols = _size(req.get("cols", 0), "cols")
        term = req.get("term", "")
        if not isinstance(term, str) or len(term) > _MAX_TERM or not all(
                c.isalnum() or c in "-_.+" for c in term):
            raise ExecError("exec term must be a terminal name such as xterm-256color")
        self.term = term
        env = req.get("env", {})
        if not isinstance(env, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and k and "=" not in k
                and "\0" not in k + v for k, v in env.items()):
            raise ExecError("exec env must map variable names (no '=' or NUL) to strings")
        self.env: Dict[str, str] = env
        cwd = req.get("cwd", "")
        if not isinstance(cwd, str) or "\0" in cwd or (cwd and not cwd.startswith("/")):
            raise ExecError("exec cwd must be an absolute path (or empty: /)")
        self.cwd = cwd or "/"

    def stream_ids(self) -> List[int]:
        return [self.stream] if self.stderr is None else [self.stream, self.stderr]


def _stream_id(value: Any, name: str) -> int:
    if not protocol.valid_stream_id(value, parity=0):
        raise ExecError("exec needs %s: a host stream id (even, in 1..2**32-1), got %r"
                        % (name, value))
    return int(value)


def _size(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 65536:
        raise ExecError("exec %s must be an integer from 0 to 65535" % name)
    return value


def signal_number(name: Any) -> int:
    """The number of a signal named in EXEC_SIGNALS ("INT"); ExecError otherwise."""
    if name not in protocol.EXEC_SIGNALS:
        raise ExecError("unknown signal %r; one of %s" % (name, ", ".join(protocol.EXEC_SIGNALS)))
    return int(getattr(signal, "SIG" + str(name)))


def _audit(path: str, record: Dict[str, Any]) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError:
        pass


def session_pids(sid: int) -> List[int]:
    """Live (not zombie) processes of session `sid`, from /proc."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # After "pid (comm)": state ppid pgrp session ...; comm may hold ")".
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 3 and fields[0] != b"Z" and int(fields[3]) == sid:
            pids.append(int(name))
    return pids


def signal_session(sid: int, signum: int) -> None:
    """Send `signum` to every process of session `sid`, whatever its group."""
    with contextlib.suppress(OSError):
        os.killpg(sid, signum)
    for pid in session_pids(sid):
        with contextlib.suppress(OSError):
            os.kill(pid, signum)


def kill_session(sid: int) -> None:
    """SIGKILL the session until nothing of it is left (it may fork meanwhile)."""
    for _ in range(50):
        pids = session_pids(sid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def set_window_size(fd: int, rows: int, cols: int) -> None:
    import fcntl
    import struct
    import termios

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class Port:
    """One stream of a run, as the session's stream table sees it."""

    def __init__(self, run: "Exec", stream_id: int) -> None:
        self.run = run
        self.id = stream_id

    def deliver(self, data: bytes) -> None:
        self.run.deliver(self.id, data)

    def grant(self, n: int) -> None:
        self.run.grant(self.id, n)

    def eof(self) -> None:
        self.run.eof(self.id)

    def reset(self) -> None:
        self.run.hangup()

    def control(self, req: Dict[str, Any]) -> None:
        self.run.control(req)


class Exec:
    """One command: spawn(), then start() once the host knows its streams."""

    def __init__(self, spec: Spec, send_json: SendJson, send_data: SendData,
                 on_done: Callable[[List[int]], None], audit_log: str = AUDIT_LOG) -> None:
        self.spec = spec
        self._send_json = send_json
        self._send_data = send_data
        self._on_done = on_done
        self._audit_log = audit_log
        self.ports = [Port(self, i) for i in spec.stream_ids()]
        self._lock = threading.Lock()
        self._wake_r = self._wake_w = -1  # a pipe, once the command runs
        # Shared with the session's reader thread, under _lock:
        self._credit = {i: protocol.WINDOW for i in spec.stream_ids()}
        self._inbox: Deque[Optional[bytes]] = collections.deque()  # None: stdin EOF
        self._queued = 0
        self._requests: List[Tuple[str, int]] = []
        self._returncode: Optional[int] = None
        self._gone = False  # the host left: nothing more is sent
        self._error = ""
        # The loop thread's own:
        self._outputs: Dict[int, int] = {}  # fd -> stream id
        self._stdin_fd = -1  # the pipe's write end, or the pty master
        self._stdin_open = False
        self._pending = b""  # the stdin chunk being written
        self._unacked = 0  # stdin bytes handed on but not yet granted back
        self._proc: Any = None
        self.pid = 0
        self._started = time.time()

    # -- starting ------------------------------------------------------------

    def spawn(self) -> int:
        """Start the command; ExecError (with a shell's exit code) if it cannot run."""
        import subprocess  # imported on first use: a third of a second under TCG

        spec = self.spec
        env = None
        preexec = None
        if spec.tty:
            import fcntl
            import termios

            def take_terminal() -> None:
                # In the child, after setsid(): the pty on fd 0 becomes its
                # controlling terminal, so ^C and job control work. Nothing
                # here may import: another thread may hold the import lock.
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)

            preexec = take_terminal
            master, child_in = os.openpty()
            child_out = child_err = child_in
            if spec.rows and spec.cols:
                set_window_size(master, spec.rows, spec.cols)
            env = dict(os.environ)
            env["TERM"] = spec.term or "dumb"
            env.update(spec.env)  # the request's own TERM, if it has one, wins
            ours = [master]
        else:
            child_in, stdin_w = os.pipe()
            stdout_r, child_out = os.pipe()
            stderr_r, child_err = os.pipe()
            ours = [stdin_w, stdout_r, stderr_r]
            if spec.env:
                env = dict(os.environ, **spec.env)
        try:
            self._proc = subprocess.Popen(
                spec.argv, stdin=child_in, stdout=child_out, stderr=child_err, cwd=spec.cwd,
                env=env, start_new_session=True, preexec_fn=preexec)
        except OSError as e:
            for fd in ours:
                os.close(fd)
            _audit(self._audit_log, {"time": self._started, "argv": spec.argv,
                                     "error": str(e)})
            code = 127 if e.errno == errno.ENOENT else 126
            raise ExecError("cannot run %s: %s" % (spec.argv[0], e.strerror or e),
                            code) from None
        finally:
            for fd in {child_in, child_out, child_err}:
                os.close(fd)
        for fd in ours:
            os.set_blocking(fd, False)
        self._stdin_fd, self._stdin_open = ours[0], True
        if spec.tty:
            self._outputs = {ours[0]: spec.stream}
        else:
            assert spec.stderr is not None
            self._outputs = {ours[1]: spec.stream, ours[2]: spec.stderr}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.pid = self._proc.pid
        return self.pid

    def start(self) -> None:
        threading.Thread(target=self._wait, daemon=True).start()
        threading.Thread(target=self._loop, daemon=True).start()

    # -- from the session's reader thread --------------------------------------

    def deliver(self, stream_id: int, data: bytes) -> None:
        with self._lock:
            if stream_id != self.spec.stream:
                self._fail_locked("stream %d carries no data to the guest" % stream_id)
            elif self._queued + len(data) > protocol.WINDOW:
                self._fail_locked("stream %d overran its window" % stream_id)
            else:
                self._inbox.append(data)
                self._queued += len(data)
        self._wake()

    def grant(self, stream_id: int, n: int) -> None:
        with self._lock:
            if n > 0:
                self._credit[stream_id] += n
        self._wake()

    def eof(self, stream_id: int) -> None:
        if stream_id == self.spec.stream:
            with self._lock:
                self._inbox.append(None)
            self._wake()

    def hangup(self) -> None:
        """The host is gone (or reset a stream): kill the command, send nothing more."""
        with self._lock:
            self._gone = True
            self._requests.append(("kill", signal.SIGHUP))
        self._wake()

    def control(self, req: Dict[str, Any]) -> None:
        """exec-signal, exec-kill (the signal, then SIGKILL after KILL_GRACE), exec-resize."""
        kind = req.get("type")
        try:
            if kind == "exec-resize":
                rows, cols = _size(req.get("rows"), "rows"), _size(req.get("cols"), "cols")
                request = ("resize", rows << 16 | cols)
            else:
                request = ("kill" if kind == "exec-kill" else "signal",
                           signal_number(req.get("signal")))
        except ExecError as e:
            with contextlib.suppress(OSError):
                self._send_json({"event": "exec-refused", "stream": self.spec.stream,
                                 "error": str(e)})
            return
        with self._lock:
            self._requests.append(request)
        self._wake()

    def _fail_locked(self, error: str) -> None:
        """The host broke the protocol: the command is killed and the run ends."""
        if not self._error:
            self._error = error
            self._requests.append(("kill", signal.SIGKILL))

    def _wake(self) -> None:
        with self._lock:  # never a write to a closed (maybe reused) fd
            if self._wake_w >= 0:
                with contextlib.suppress(OSError):  # full: a wake-up is pending anyway
                    os.write(self._wake_w, b"x")

    # -- threads ---------------------------------------------------------------

    def _wait(self) -> None:
        code = self._proc.wait()
        with self._lock:
            self._returncode = code
        self._wake()

    def _loop(self) -> None:
        try:
            result = self._run()
        except Exception as e:  # a bug: never leave the command running unseen
            kill_session(self.pid)
            code = self._proc.wait()
            result = {"exitCode": code if code >= 0 else 128 - code, "signal": None,
                      "timedOut": False, "killed": True, "error": "internal error: %r" % (e,)}
        self._finish(result)

    def _run(self) -> Dict[str, Any]:
        spec = self.spec
        deadline = time.monotonic() + spec.timeout if spec.timeout > 0 else None
        kill_at: Optional[float] = None  # when a kill turns into SIGKILL
        killed = timed_out = False
        exited_at: Optional[float] = None
        last_output = 0.0
        while True:
            with self._lock:
                requests, self._requests = self._requests, []
                returncode, gone, credit = self._returncode, self._gone, dict(self._credit)
            now = time.monotonic()
            for kind, arg in requests:
                if kind == "resize" and spec.tty:
                    with contextlib.suppress(OSError):
                        set_window_size(self._stdin_fd, arg >> 16, arg & 0xFFFF)
                elif kind == "signal":
                    signal_session(self.pid, arg)
                elif kind == "kill" and not killed:
                    killed = True
                    signal_session(self.pid, arg)
                    kill_at = now + (0 if arg == signal.SIGKILL else KILL_GRACE)
            if deadline is not None and now >= deadline and not killed:
                killed = timed_out = True
                signal_session(self.pid, signal.SIGTERM)
                kill_at = now + KILL_GRACE
            if returncode is not None and exited_at is None:
                exited_at = now
            if kill_at is not None and (now >= kill_at or exited_at is not None):
                kill_session(self.pid)  # dead or out of grace: nothing of it may stay
                kill_at = None
            quiet_since = max(last_output, exited_at or 0.0)
            if exited_at is not None and self._ended(credit, gone, now - quiet_since):
                break
            self._feed_stdin()
            self._grant_stdin()  # what it dropped too: poll may block for long next
            wakes = [t for t in (None if killed else deadline, kill_at,
                                 None if exited_at is None else quiet_since + QUIET_AFTER_EXIT)
                     if t is not None]
            timeout_ms = max(0, int((min(wakes) - now) * 1000) + 1) if wakes else None
            for fd, ev in self._poller(credit).poll(timeout_ms):
                if fd == self._wake_r:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 4096)
                    continue
                # POLLERR alone: the command closed its stdin, and the write
                # that says so (EPIPE) drops what waits; without it, poll spins.
                if ev & (select.POLLOUT | select.POLLERR) and fd == self._stdin_fd \
                        and self._pending:
                    self._write_stdin()
                readable = ev & (select.POLLIN | select.POLLHUP | select.POLLERR)
                if fd in self._outputs and readable and self._read_output(fd, credit):
                    last_output = time.monotonic()
            self._grant_stdin()
        code = self._proc.wait()
        return {"exitCode": TIMEOUT_EXIT if timed_out else code if code >= 0 else 128 - code,
                "signal": -code if code < 0 else None, "timedOut": timed_out,
                "killed": killed and not timed_out}

    def _ended(self, credit: Dict[int, int], gone: bool, quiet: float) -> bool:
        """After the exit: the output ended, or is quiet (children may hold it open)."""
        if gone or self._error or not self._outputs:
            return True
        waiting_for_host = any(credit[sid] <= 0 for sid in self._outputs.values())
        return not waiting_for_host and quiet >= QUIET_AFTER_EXIT

    def _poller(self, credit: Dict[int, int]) -> Any:
        masks = {self._wake_r: select.POLLIN}
        for fd, sid in self._outputs.items():
            if credit[sid] > 0:
                masks[fd] = select.POLLIN
        if self._pending and self._stdin_open:
            masks[self._stdin_fd] = masks.get(self._stdin_fd, 0) | select.POLLOUT
        poller = select.poll()
        for fd, mask in masks.items():
            poller.register(fd, mask)
        return poller

    # -- stdin -----------------------------------------------------------------

    def _feed_stdin(self) -> None:
        """The next chunk from the host into _pending; after stdin closed, drop them."""
        if not self._stdin_open:
            with self._lock:
                dropped = sum(len(c) for c in self._inbox if c) + len(self._pending)
                self._inbox.clear()
                self._queued -= dropped
            self._pending = b""
            self._unacked += dropped  # granted back: the host must never stall on it
            return
        if self._pending:
            return
        with self._lock:
            chunk = self._inbox.popleft() if self._inbox else b""
        if chunk is not None:
            self._pending = chunk
        elif self.spec.tty:
            # A pty cannot be half-closed: the terminal's end-of-file character
            # ends a read at the start of a line, as ^D typed there would.
            with contextlib.suppress(OSError):
                os.write(self._stdin_fd, b"\x04")
        else:
            os.close(self._stdin_fd)
            self._stdin_open = False

    def _write_stdin(self) -> None:
        try:
            n = os.write(self._stdin_fd, self._pending)
        except BlockingIOError:
            return
        except OSError:  # the command closed its stdin: what comes is dropped
            if not self.spec.tty:
                os.close(self._stdin_fd)
            self._stdin_open = False
            return
        self._pending = self._pending[n:]
        self._unacked += n
        with self._lock:
            self._queued -= n

    def _grant_stdin(self) -> None:
        if self._unacked <= 0:
            return
        with self._lock:
            idle = not self._inbox
        if self._unacked >= protocol.WINDOW // 4 or (idle and not self._pending):
            self._send({"type": "window", "stream": self.spec.stream, "bytes": self._unacked})
            self._unacked = 0

    # -- output ----------------------------------------------------------------

    def _read_output(self, fd: int, credit: Dict[int, int]) -> bool:
        """Read what credit allows and send it; at EOF end the stream. True if data came."""
        sid = self._outputs[fd]
        try:
            data = os.read(fd, min(credit[sid], protocol.DATA_CHUNK))
        except BlockingIOError:
            return False
        except OSError:  # EIO: a pty with no process left on its other side
            data = b""
        if not data:
            del self._outputs[fd]
            if fd == self._stdin_fd:
                self._stdin_open = False  # the pty: nobody left to read input either
            else:
                os.close(fd)
            self._send({"type": "eof", "stream": sid})
            return False
        credit[sid] -= len(data)
        with self._lock:
            self._credit[sid] -= len(data)
        if not self._gone:
            try:
                self._send_data(sid, data)
            except OSError:
                self.hangup()
        return True

    def _send(self, obj: Dict[str, Any]) -> None:
        if not self._gone:
            try:
                self._send_json(obj)
            except OSError:
                self.hangup()

    # -- the end ---------------------------------------------------------------

    def _finish(self, result: Dict[str, Any]) -> None:
        """Close every fd, audit, report the exit (after the output it follows)."""
        fds = set(self._outputs)
        if self._stdin_open or self.spec.tty:
            fds.add(self._stdin_fd)
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        for sid in self._outputs.values():
            self._send({"type": "eof", "stream": sid})
        self._outputs = {}
        result["seconds"] = round(time.time() - self._started, 3)
        if self._error:
            result["error"] = self._error
        _audit(self._audit_log, {"time": self._started, "argv": self.spec.argv,
                                 "tty": self.spec.tty, **result})  # before anyone hears of it
        self._on_done(self.spec.stream_ids())
        self._send({"event": "exit", "stream": self.spec.stream, **result})
        with self._lock:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1
