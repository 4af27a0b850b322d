"""roost-guestagent: the host's helper inside the guest.

Standard library only (any cloud image's python3 >= 3.8). Threads and
blocking I/O rather than asyncio: under TCG, importing asyncio costs most
of a second of boot, and each connection here is a simple read loop.

Serves the same protocol on every channel it finds: the virtio-serial port,
a Unix socket (tests, and the SSH-forwarded fallback) and vsock where the
guest has it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time

from roost_guest import (
    __version__,
    diff,
    execute,
    health,
    mounts,
    ports,
    protocol,
    tunnel,
    worker,
)

# typing costs ~70 ms of guest boot under TCG; annotations are strings here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional, Union

    StreamEnd = Union[tunnel.Stream, execute.Port]

if TYPE_CHECKING:
    Handler = Callable[["Connection", Dict[str, Any]], Dict[str, Any]]
_STARTED = time.monotonic()
HOOK_TIMEOUT = 30.0
PART_ITEMS = 1000  # list items per "part" event: well under the frame limit


def log(msg: str) -> None:
    sys.stderr.write("roost-guestagent: %s\n" % msg)
    sys.stderr.flush()


class RequestError(Exception):
    """A request that cannot be served; the message goes back to the host."""


class Channel:
    """One byte stream to the host."""

    name = "channel"

    def read(self) -> bytes:
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class SocketChannel(Channel):
    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name

    def read(self) -> bytes:
        return self.sock.recv(65536)

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Connection:
    """One host session on a channel: requests, event subscriptions, streams."""

    def __init__(self, agent: "Agent", channel: Channel) -> None:
        self.agent = agent
        self.channel = channel
        self.decoder = protocol.FrameDecoder()
        self._write_lock = threading.Lock()
        self._streams_lock = threading.Lock()
        self.streams: Dict[int, StreamEnd] = {}
        self.listeners: Dict[str, socket.socket] = {}
        self._next_stream = 1  # guest-initiated streams are odd
        self.subscribed = False
        self.closed = False

    def send(self, obj: Dict[str, Any]) -> None:
        self.send_raw(protocol.encode_json(obj))

    def send_data(self, stream_id: int, data: bytes) -> None:
        self.send_raw(protocol.encode_data(stream_id, data))

    def send_raw(self, frame: bytes) -> None:
        with self._write_lock:
            if self.closed:
                raise OSError("session closed")
            self.channel.write(frame)

    def feed(self, data: bytes) -> bool:
        """Handle incoming bytes; False when the connection must close."""
        try:
            messages = self.decoder.feed(data)
        except protocol.ProtocolError as e:
            log("%s: %s; closing the connection" % (self.channel.name, e))
            with contextlib.suppress(OSError):
                self.send({"ok": False, "error": "protocol error: %s" % e})
            return False
        for msg in messages:
            if isinstance(msg, protocol.JsonMessage):
                self.agent.dispatch(self, msg.obj)
            else:
                stream = self.streams.get(msg.stream_id)
                if stream is not None:
                    stream.deliver(msg.data)
        return True

    def serve(self) -> None:
        try:
            while True:
                data = self.channel.read()
                if not data or not self.feed(data):
                    return
        except OSError as e:
            log("%s: %s" % (self.channel.name, e))
        finally:
            self.close()
            self.channel.close()

    def add_stream(self, stream_id: int, sock: socket.socket,
                   datagram: bool = False) -> tunnel.Stream:
        """A stream of this session over `sock` (not started yet)."""
        stream = tunnel.Stream(stream_id, sock, datagram, self.send, self.send_data,
                               self.stream_done)
        with self._streams_lock:
            self.streams[stream.id] = stream
        return stream

    def offer_stream(self, sock: socket.socket, event: Dict[str, Any]) -> tunnel.Stream:
        """A guest-initiated stream: announced to the host by an accept event
        (`event` plus the stream id), then started. OSError if the host is gone."""
        with self._streams_lock:
            stream_id = self._next_stream
            self._next_stream += 2
        stream = self.add_stream(stream_id, sock)
        try:
            self.send({"event": "accept", "stream": stream_id, **event})
        except OSError:
            stream.reset()
            raise
        stream.start()
        return stream

    def stream_done(self, stream_id: int) -> None:
        with self._streams_lock:
            self.streams.pop(stream_id, None)

    def add_exec(self, run: execute.Exec) -> bool:
        """Register a command's streams; False if the host reused a stream id."""
        with self._streams_lock:
            if any(port.id in self.streams for port in run.ports):
                return False
            for port in run.ports:
                self.streams[port.id] = port
        return True

    def exec_done(self, stream_ids: List[int]) -> None:
        with self._streams_lock:
            for stream_id in stream_ids:
                self.streams.pop(stream_id, None)

    def close(self) -> None:
        """The host left: end every stream and subscription of this session."""
        with self._write_lock:
            self.closed = True
        self.reset_session()

    def reset_session(self) -> None:
        self.agent.unsubscribe(self)
        with self._streams_lock:
            streams = list(self.streams.values())
            listeners = list(self.listeners.items())
            self.listeners.clear()
        for stream in streams:
            stream.reset()
        for path, sock in listeners:
            close_listener(sock, path)

    def listen_unix(self, path: str) -> None:
        """Reverse forwarding: each connection to `path` becomes a stream to the host."""
        sock = unix_listener(path, mode=0o666)
        with self._streams_lock:
            old = self.listeners.pop(path, None)
            self.listeners[path] = sock
        if old is not None:
            close_listener(old, path)
        threading.Thread(target=self._accept_loop, args=(sock, path), daemon=True).start()

    def _accept_loop(self, sock: socket.socket, path: str) -> None:
        while True:
            try:
                client, _ = sock.accept()
            except OSError:
                return  # closed with the session
            try:
                self.offer_stream(client, {"path": path})
            except OSError:
                return


class Agent:
    def __init__(self, opts: Optional[Options] = None) -> None:
        self.opts = opts or Options()
        self.worker = worker.WorkerStatus(self.opts.busy_threshold, self.opts.sample_secs,
                                          self.worker_changed)
        self.health = health.HealthMonitor(self.broadcast, self.opts.integrations_dir,
                                           self.opts.probes_dir)
        self.handlers: Dict[str, Handler] = {
            "ping": lambda conn, req: {"pong": True},
            "info": lambda conn, req: self.info(),
            "events": self.subscribe,
            "listen": self.listen,
            "mount": self.mount,
            "umount": self.umount,
            "status": lambda conn, req: self.worker_status(),
            "health": lambda conn, req: self.health.health(),
            "probes": lambda conn, req: self.health.probe_results(),
            "diff": self.diff,
            "set-clock": self.set_clock,
            "sleep-prep": self.sleep_prep,
            "wake": self.wake,
        }
        self._sshfs: Dict[str, Any] = {}  # mount point -> sshfs process
        self.ports = PortWatcher(self.ports_changed)
        self._subscribers: List[Connection] = []
        self._sub_lock = threading.Lock()

    def info(self) -> Dict[str, Any]:
        return {
            "version": __version__,
            "python": "%d.%d.%d" % sys.version_info[:3],
            "kernel": os.uname().release,
            "hostname": socket.gethostname(),
            "uptime": _uptime(),
            "agentUptime": round(time.monotonic() - _STARTED, 3),
            "pid": os.getpid(),
            "ports": ports.as_dicts(self.ports.current()),
            "portScanner": self.ports.scanner_kind,
        }

    # -- events -----------------------------------------------------------

    def subscribe(self, conn: Connection, req: Dict[str, Any]) -> Dict[str, Any]:
        with self._sub_lock:
            if conn not in self._subscribers:
                self._subscribers.append(conn)
        self.ports.start()
        self.worker.start()
        return {"ports": ports.as_dicts(self.ports.current()), "worker": self.worker.snapshot()}

    def listen(self, conn: Connection, req: Dict[str, Any]) -> Dict[str, Any]:
        path = req.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            raise RequestError("listen needs an absolute socket path")
        try:
            conn.listen_unix(path)
        except OSError as e:
            raise RequestError("cannot listen on %s: %s" % (path, e.strerror or e)) from None
        return {"path": path}

    def mount(self, conn: Connection, req: Dict[str, Any]) -> Dict[str, Any]:
        try:
            if req.get("fstype") == "reverse-sshfs":
                return self._mount_sshfs(conn, req)
            return mounts.mount_device(req)
        except mounts.MountError as e:
            raise RequestError(str(e)) from None

    def _mount_sshfs(self, conn: Connection, req: Dict[str, Any]) -> Dict[str, Any]:
        """sshfs speaks SFTP over a stream that the host joins to sftp-server."""
        path = mounts.check_mount_point(req.get("mountPoint"))
        ours, theirs = socket.socketpair()
        stream = conn.offer_stream(ours, {"path": "sftp:" + str(req.get("remotePath")),
                                          "readonly": bool(req.get("readonly"))})
        try:
            proc = mounts.start_sshfs(req, theirs)
        except mounts.MountError:
            stream.reset()
            raise
        finally:
            theirs.close()
        self._sshfs[path] = proc
        return {"mountPoint": path}

    def umount(self, conn: Connection, req: Dict[str, Any]) -> Dict[str, Any]:
        try:
            result = mounts.umount(req)
        except mounts.MountError as e:
            raise RequestError(str(e)) from None
        proc = self._sshfs.pop(str(req.get("mountPoint")), None)
        if proc is not None:
            try:
                proc.wait(5)
            except Exception:
                proc.kill()
                proc.wait()
        return result

    def _run_hooks(self, key: str) -> List[Dict[str, Any]]:
        """Each integration's checkpoint_cmd or restore_cmd, with a timeout."""
        results = []
        for check in list(self.health.checks.values()):
            cmd = getattr(check, key)
            if not cmd:
                continue
            code, _, err, timed_out = health.run_command(cmd, HOOK_TIMEOUT)
            result: Dict[str, Any] = {"name": check.name, "exitCode": code}
            if timed_out:
                result["error"] = "timed out after %gs" % HOOK_TIMEOUT
            elif code != 0:
                result["error"] = err.strip()[-300:]
            results.append(result)
        return results

    def sleep_prep(self, conn: Connection, req: Dict[str, Any]) -> Dict[str, Any]:
        """Before the VM state is saved: checkpoints, then a small clean state."""
        checkpoints = self._run_hooks("checkpoint_cmd")
        os.sync()
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        except OSError:
            pass
        return {"checkpoints": checkpoints, "ready": True}

    def wake(self, conn: Connection, req: Dict[str, Any]) -> Dict[str, Any]:
        """After a restore: the wall clock, then each restore_cmd."""
        clock = self.set_clock(conn, req) if "time" in req else {}
        return {"restores": self._run_hooks("restore_cmd"), **clock}

    def set_clock(self, conn: Connection, req: Dict[str, Any]) -> Dict[str, Any]:
        """After a restore the guest's wall clock is where it was saved."""
        value = req.get("time")
        if not isinstance(value, (int, float)):
            raise RequestError("set-clock needs time (seconds since the epoch)")
        before = time.time()
        try:
            time.clock_settime(time.CLOCK_REALTIME, float(value))
        except OSError as e:
            raise RequestError("cannot set the clock: %s" % e) from None
        return {"skew": round(float(value) - before, 3)}

    def diff(self, conn: Connection, req: Dict[str, Any]) -> Dict[str, Any]:
        try:
            changes = diff.diff()
        except diff.DiffError as e:
            raise RequestError(str(e)) from None
        # Any number of changes: sent in parts that each fit a frame.
        for i in range(0, len(changes), PART_ITEMS):
            conn.send({"event": "part", "id": req.get("id"), "key": "changes",
                       "items": changes[i : i + PART_ITEMS]})
        return {"parts": "changes", "count": len(changes)}

    def worker_status(self) -> Dict[str, Any]:
        self.worker.start()
        return self.worker.snapshot()

    def worker_changed(self, status: Dict[str, Any]) -> None:
        self.broadcast({"event": "worker", **status})

    def start_exec(self, conn: Connection, req: Dict[str, Any]) -> None:
        """Spawn the command and answer {"pid"}, or {"error", "exitCode"} when it
        cannot run; only then does it start to flow (see roost_guest.execute)."""
        req_id = req.get("id")
        try:
            run = self._spawn(conn, req)
        except RequestError as e:
            with contextlib.suppress(OSError):
                conn.send({"id": req_id, "ok": False, "error": str(e)})
            return
        except execute.ExecError as e:  # served: the command could not run
            with contextlib.suppress(OSError):
                conn.send({"id": req_id, "ok": True,
                           "result": {"error": str(e), "exitCode": e.exit_code}})
            return
        try:
            conn.send({"id": req_id, "ok": True, "result": {"pid": run.pid}})
        except OSError:
            run.hangup()  # the host is gone: the run's loop kills the command
        run.start()

    def _spawn(self, conn: Connection, req: Dict[str, Any]) -> execute.Exec:
        if not self.opts.allow_exec:
            raise RequestError("exec is disabled in this guest (guestAgent.allowExec: false)")
        try:
            spec = execute.Spec(req)
        except execute.ExecError as e:
            raise RequestError(str(e)) from None
        run = execute.Exec(spec, conn.send, conn.send_data, conn.exec_done,
                           self.opts.audit_log)
        if not conn.add_exec(run):
            raise RequestError("exec stream ids already in use")
        try:
            run.spawn()
        except execute.ExecError:
            conn.exec_done(spec.stream_ids())
            raise
        return run

    def broadcast(self, event: Dict[str, Any]) -> None:
        with self._sub_lock:
            subscribers = list(self._subscribers)
        for conn in subscribers:
            try:
                conn.send(event)
            except OSError:
                self.unsubscribe(conn)

    def unsubscribe(self, conn: Connection) -> None:
        with self._sub_lock:
            if conn in self._subscribers:
                self._subscribers.remove(conn)

    def ports_changed(self, added: List[Any], removed: List[Any]) -> None:
        self.broadcast({"event": "ports", "added": ports.as_dicts(added),
                        "removed": ports.as_dicts(removed)})

    # -- requests ---------------------------------------------------------

    def dispatch(self, conn: Connection, req: Dict[str, Any]) -> None:
        kind = req.get("type")
        if kind in ("window", "eof", "reset"):
            self.stream_control(conn, req)
            return
        if kind in execute.CONTROL_TYPES:
            port = conn.streams.get(req.get("stream"))  # type: ignore[arg-type]
            if isinstance(port, execute.Port):
                port.control(req)
            return
        if kind == "hello":
            # A new host session; on virtio-serial the old one may not have
            # ended with an EOF we saw.
            conn.reset_session()
            conn.send_raw(protocol.sync_frame(int(req.get("nonce", 0))))
            return
        if kind in ("tunnel", "exec"):
            # Connecting or spawning may take a while; never hold up the channel.
            opener = self.open_tunnel if kind == "tunnel" else self.start_exec
            threading.Thread(target=opener, args=(conn, req), daemon=True).start()
            return
        if kind in ("mount", "umount", "diff", "sleep-prep", "wake"):
            handler = self.handlers[kind]
            threading.Thread(target=self.reply, args=(conn, req, handler), daemon=True).start()
            return
        self.reply(conn, req, self.handlers.get(str(kind)))

    def reply(self, conn: Connection, req: Dict[str, Any], handler: Any) -> None:
        req_id = req.get("id")
        if handler is None:
            reply: Dict[str, Any] = {
                "id": req_id, "ok": False, "error": "unknown request type %r" % req.get("type"),
            }
        else:
            try:
                reply = {"id": req_id, "ok": True, "result": handler(conn, req)}
            except RequestError as e:
                reply = {"id": req_id, "ok": False, "error": str(e)}
            except Exception as e:  # a bug must not take the agent down
                log("request %r failed: %r" % (req.get("type"), e))
                reply = {"id": req_id, "ok": False, "error": "internal error: %r" % (e,)}
        try:
            conn.send(reply)
        except protocol.ProtocolError as e:
            conn.send({"id": req_id, "ok": False, "error": "reply not sendable: %s" % e})
        except OSError as e:
            log("reply failed: %s" % e)

    def open_tunnel(self, conn: Connection, req: Dict[str, Any]) -> None:
        stream_id = req.get("stream")
        if not isinstance(stream_id, int) or stream_id in conn.streams:
            reply = {"id": req.get("id"), "ok": False, "error": "bad or duplicate stream id"}
        else:
            try:
                sock = tunnel.open_local(req)
            except tunnel.TunnelError as e:
                reply = {"id": req.get("id"), "ok": False, "error": str(e)}
            else:
                stream = conn.add_stream(stream_id, sock, req.get("proto") == "udp")
                reply = {"id": req.get("id"), "ok": True, "result": {"stream": stream_id}}
                try:
                    conn.send(reply)
                except OSError:
                    stream.reset()
                    return
                stream.start()
                return
        with contextlib.suppress(OSError):
            conn.send(reply)

    def stream_control(self, conn: Connection, req: Dict[str, Any]) -> None:
        stream = conn.streams.get(req.get("stream"))  # type: ignore[arg-type]
        if stream is None:
            return  # already gone; the peer learns from our own reset or eof
        kind = req["type"]
        if kind == "window":
            stream.grant(int(req.get("bytes", 0)))
        elif kind == "eof":
            stream.eof()
        else:
            stream.reset()


class PortWatcher:
    """Rescans listening sockets and reports changes, while anyone listens."""

    INTERVAL = 0.1  # a new listener reaches the host well within 250 ms

    def __init__(self, on_change: Callable[[List[Any], List[Any]], None]) -> None:
        self.on_change = on_change
        self._lock = threading.Lock()
        self._started = False
        self._scanner = ports.make_scanner()
        self.scanner_kind = type(self._scanner).__name__
        self._current = self._scanner.scan()

    def current(self) -> Any:
        with self._lock:
            if not self._started:
                self._current = self._scanner.scan()
            return self._current

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
            self._current = self._scanner.scan()
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            time.sleep(self.INTERVAL)
            try:
                now = self._scanner.scan()
            except OSError as e:
                log("port scan failed (%s); using /proc/net" % e)
                self._scanner = ports.ProcScanner()
                self.scanner_kind = "ProcScanner"
                continue
            with self._lock:
                before, self._current = self._current, now
            if now != before:
                self.on_change(sorted(now - before), sorted(before - now))


def _uptime() -> float:
    try:
        with open("/proc/uptime") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0


HELLO_MARK = protocol.KIND_JSON + b'{"type":"hello"'


def serve_virtio_port(agent: Agent, path: str) -> None:
    """Serve the virtio-serial port for the agent's whole life.

    read() gives EOF while no host is connected to the port's backend; each
    EOF ends a host session, so the next data starts a fresh decoder.
    Writes are split: the port takes at most 32 KiB per write().
    """
    while not os.path.exists(path):
        time.sleep(0.05)
    fd = os.open(path, os.O_RDWR)

    class PortChannel(Channel):
        name = path

        def read(self) -> bytes:
            return os.read(fd, 65536)

        def write(self, data: bytes) -> None:
            view = memoryview(data)
            while view:
                n = os.write(fd, view[:32768])
                view = view[n:]

        def close(self) -> None:
            pass

    channel = PortChannel()
    conn: Optional[Connection] = None
    discarding = False
    while True:
        data = os.read(fd, 65536)
        if not data:
            if conn is not None:
                conn.close()  # the host left: its streams end with it
            conn = None
            discarding = False
            time.sleep(0.02)
            continue
        if discarding:
            # After a protocol error, drop input until the host disconnects
            # or starts a new session with a hello frame.
            at = data.find(HELLO_MARK)
            if at < protocol.HEADER_SIZE:
                continue
            data = data[at - protocol.HEADER_SIZE :]
            discarding = False
            conn = None
        if conn is None:
            conn = Connection(agent, channel)
        if not conn.feed(data):
            conn.close()
            discarding = True


def serve_listener(agent: Agent, sock: socket.socket, name: str) -> None:
    while True:
        client, _ = sock.accept()
        conn = Connection(agent, SocketChannel(client, name))
        threading.Thread(target=conn.serve, daemon=True).start()


def unix_listener(path: str, mode: int = 0o600) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, mode)
    sock.listen(16)
    return sock


def close_listener(sock: socket.socket, path: str) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
    with contextlib.suppress(OSError):
        os.unlink(path)


def vsock_listener(port: int) -> Optional[socket.socket]:
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        return None
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.bind((socket.VMADDR_CID_ANY, port))
        sock.listen(16)
        return sock
    except OSError as e:
        log("vsock port %d unavailable: %s" % (port, e))
        return None


USAGE = """usage: roost-guestagent [--port DEVICE] [--unix PATH] [--vsock-port N]
  --port DEVICE    serve the virtio-serial port DEVICE
  --unix PATH      listen on a Unix socket at PATH
  --vsock-port N   listen on vsock port N (0: off)
  --allow-exec     serve the dev-only exec request (audited)
  --audit-log PATH where exec runs are logged (default /var/log/roost/exec.log)
  --integrations-dir DIR, --probes-dir DIR
                   health check and probe definitions (/etc/roost/*.d)
  --busy-threshold X, --sample-secs S
                   busy while more than X tasks are runnable, sampled every S"""


class Options:
    def __init__(self) -> None:
        self.port = ""
        self.unix = ""
        self.vsock_port = 0
        self.allow_exec = False
        self.busy_threshold = 0.5
        self.sample_secs = 1.0
        self.audit_log = execute.AUDIT_LOG
        self.integrations_dir = health.INTEGRATIONS_DIR
        self.probes_dir = health.PROBES_DIR


def parse_args(argv: List[str]) -> Options:
    """A hand-rolled parser: argparse costs a quarter second under TCG."""
    opts = Options()
    args = list(argv)
    while args:
        flag = args.pop(0)
        if flag in ("-h", "--help"):
            print(USAGE)
            sys.exit(0)
        if flag == "--allow-exec":
            opts.allow_exec = True
            continue
        name, eq, value = flag.partition("=")
        if name not in ("--port", "--unix", "--vsock-port", "--busy-threshold",
                        "--sample-secs", "--audit-log", "--integrations-dir",
                        "--probes-dir"):
            sys.exit("roost-guestagent: unknown option %r\n%s" % (flag, USAGE))
        if not eq:
            if not args:
                sys.exit("roost-guestagent: %s needs a value" % name)
            value = args.pop(0)
        if name in ("--busy-threshold", "--sample-secs"):
            try:
                number = float(value)
            except ValueError:
                sys.exit("roost-guestagent: %s needs a number, got %r" % (name, value))
            if name == "--sample-secs":
                opts.sample_secs = max(number, 0.1)
            else:
                opts.busy_threshold = number
        elif name == "--vsock-port":
            if not value.isdigit():
                sys.exit("roost-guestagent: --vsock-port needs a number, got %r" % value)
            opts.vsock_port = int(value)
        elif name == "--port":
            opts.port = value
        elif name == "--audit-log":
            opts.audit_log = value
        elif name == "--integrations-dir":
            opts.integrations_dir = value
        elif name == "--probes-dir":
            opts.probes_dir = value
        else:
            opts.unix = value
    return opts


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    agent = Agent(args)
    agent.health.start()  # rescans its directories; runs nothing until files appear
    threads = []
    if args.unix:
        sock = unix_listener(args.unix)
        threads.append(threading.Thread(target=serve_listener, args=(agent, sock, args.unix)))
    if args.vsock_port:
        vsock = vsock_listener(args.vsock_port)
        if vsock is not None:
            threads.append(
                threading.Thread(target=serve_listener, args=(agent, vsock, "vsock"))
            )
    if args.port:
        threads.append(threading.Thread(target=serve_virtio_port, args=(agent, args.port)))
    if not threads:
        sys.exit("roost-guestagent: nothing to serve: give --port, --unix or --vsock-port")
    for t in threads:
        t.daemon = True
        t.start()
    log("serving (%s)" % ", ".join(x for x in (args.port, args.unix) if x))
    while any(t.is_alive() for t in threads):
        time.sleep(3600)


if __name__ == "__main__":
    main()
