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

from roost_guest import __version__, protocol

# typing costs ~70 ms of guest boot under TCG; annotations are strings here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional

if TYPE_CHECKING:
    Handler = Callable[[Dict[str, Any]], Dict[str, Any]]
_STARTED = time.monotonic()


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
    """Decodes requests from a channel and writes responses and events."""

    def __init__(self, agent: "Agent", channel: Channel) -> None:
        self.agent = agent
        self.channel = channel
        self.decoder = protocol.FrameDecoder()
        self._write_lock = threading.Lock()

    def send(self, obj: Dict[str, Any]) -> None:
        data = protocol.encode_json(obj)
        with self._write_lock:
            self.channel.write(data)

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
            self.channel.close()


class Agent:
    def __init__(self) -> None:
        self.handlers: Dict[str, Handler] = {
            "ping": lambda req: {"pong": True},
            "info": lambda req: self.info(),
        }

    def info(self) -> Dict[str, Any]:
        return {
            "version": __version__,
            "python": "%d.%d.%d" % sys.version_info[:3],
            "kernel": os.uname().release,
            "hostname": socket.gethostname(),
            "uptime": _uptime(),
            "agentUptime": round(time.monotonic() - _STARTED, 3),
            "pid": os.getpid(),
        }

    def dispatch(self, conn: Connection, req: Dict[str, Any]) -> None:
        req_id = req.get("id")
        handler = self.handlers.get(str(req.get("type")))
        if handler is None:
            reply: Dict[str, Any] = {
                "id": req_id, "ok": False, "error": "unknown request type %r" % req.get("type"),
            }
        else:
            try:
                reply = {"id": req_id, "ok": True, "result": handler(req)}
            except RequestError as e:
                reply = {"id": req_id, "ok": False, "error": str(e)}
            except Exception as e:  # a bug must not take the agent down
                log("request %r failed: %r" % (req.get("type"), e))
                reply = {"id": req_id, "ok": False, "error": "internal error: %r" % (e,)}
        try:
            conn.send(reply)
        except OSError as e:
            log("reply failed: %s" % e)


def _uptime() -> float:
    try:
        with open("/proc/uptime") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0


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
            conn = None
            discarding = False
            time.sleep(0.02)
            continue
        if discarding:
            continue  # after a protocol error, drop input until the host reconnects
        if conn is None:
            conn = Connection(agent, channel)
        if not conn.feed(data):
            discarding = True


def serve_listener(agent: Agent, sock: socket.socket, name: str) -> None:
    while True:
        client, _ = sock.accept()
        conn = Connection(agent, SocketChannel(client, name))
        threading.Thread(target=conn.serve, daemon=True).start()


def unix_listener(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o600)
    sock.listen(16)
    return sock


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
  --vsock-port N   listen on vsock port N (0: off)"""


class Options:
    def __init__(self) -> None:
        self.port = ""
        self.unix = ""
        self.vsock_port = 0


def parse_args(argv: List[str]) -> Options:
    """A hand-rolled parser: argparse costs a quarter second under TCG."""
    opts = Options()
    args = list(argv)
    while args:
        flag = args.pop(0)
        if flag in ("-h", "--help"):
            print(USAGE)
            sys.exit(0)
        name, eq, value = flag.partition("=")
        if name not in ("--port", "--unix", "--vsock-port"):
            sys.exit("roost-guestagent: unknown option %r\n%s" % (flag, USAGE))
        if not eq:
            if not args:
                sys.exit("roost-guestagent: %s needs a value" % name)
            value = args.pop(0)
        if name == "--vsock-port":
            if not value.isdigit():
                sys.exit("roost-guestagent: --vsock-port needs a number, got %r" % value)
            opts.vsock_port = int(value)
        elif name == "--port":
            opts.port = value
        else:
            opts.unix = value
    return opts


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    agent = Agent()
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
