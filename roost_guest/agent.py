"""roost-guestagent: the host's helper inside the guest.

Standard library only (any cloud image's python3 >= 3.8). Threads and
blocking I/O rather than asyncio: under TCG, importing asyncio costs most
of a second of boot, and each connection here is a simple read loop.

Serves the same protocol on every channel it finds: the virtio-serial port,
a Unix socket (tests, and the SSH-forwarded fallback) and vsock where the
guest has it (answering the host only: see vsock.py).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import threading
import time

# execute, mounts and diff are imported where they are first used: under TCG
# their imports (and signal's) cost tens of milliseconds before the first
# answer, which the host waits for at every boot; `socket` and `json` are
# replaced by lighter equivalents for the same reason.
from roost_guest import (
    INTERPRETER_UP,
    __version__,
    compactjson,
    health,
    ports,
    procevents,
    protocol,
    tunnel,
    vsock,
    worker,
)
from roost_guest import lightsocket as socket

# typing costs ~70 ms of guest boot under TCG; annotations are strings here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional, Set, Union

    from roost_guest import dnsrelay, execute, files

    StreamEnd = Union[tunnel.Stream, execute.Port, files.FileStream, files.Watch,
                      "ReservedStream"]

if TYPE_CHECKING:
    Handler = Callable[["Connection", Dict[str, Any]], Dict[str, Any]]
_STARTED = time.monotonic()
# What a handler returns when it has sent its reply itself.
ANSWERED: Dict[str, Any] = {}
HOOK_TIMEOUT = 30.0
PART_ITEMS = 1000  # list items per "part" event: well under the frame limit
PART_BYTES = 192 * 1024  # and at most this much of them (a frame holds 256 KiB)


def log(msg: str) -> None:
    sys.stderr.write("roost-guestagent: %s\n" % msg)
    sys.stderr.flush()


def end_orphaned_commands() -> None:
    killed = health.end_orphans()
    if killed:
        log("killed %d check(s) a previous guest agent left running: pids %s"
            % (len(killed), " ".join(map(str, killed))))


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


def new_epoch() -> int:
    """A random name for one incarnation of the guest side's session state."""
    return int.from_bytes(os.urandom(6), "big")


def short(value: object) -> str:
    """A peer's value in a message of ours: never long, whatever it was."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


FILE_STREAMS = ("files-read", "files-write", "files-watch")
BAD_STREAM = "bad or duplicate stream id %s (host streams are even, 1..2**32-1)"


class ReservedStream:
    """A host stream a files request names, until the request makes it."""

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.was_reset = False

    def deliver(self, data: bytes) -> None:
        pass

    def grant(self, n: int) -> None:
        pass

    def eof(self) -> None:
        pass

    def reset(self) -> None:
        self.was_reset = True


class Connection:
    """One host session on a channel: requests, event subscriptions, streams.

    Nothing a frame holds may end the loop that feeds it: a bad frame gets
    an error reply, a frame that loses the frame boundaries ends the
    session (feed returns False), and a bug in handling one frame is
    logged and answered like a bad frame.
    """

    LOG_FIRST = 5  # bad frames logged per session, then one in LOG_EVERY
    LOG_EVERY = 1000

    def __init__(self, agent: "Agent", channel: Channel, epoch: int = 0) -> None:
        self.agent = agent
        self.channel = channel
        self.epoch = epoch  # sent in the sync frame (see roost_guest.protocol)
        self.decoder = protocol.FrameDecoder()
        self._write_lock = threading.Lock()
        self._streams_lock = threading.Lock()
        self.streams: Dict[int, StreamEnd] = {}
        self.listeners: Dict[str, socket.socket] = {}
        self._next_stream = 1  # guest-initiated streams are odd
        # Ids of requests served on threads of their own; a second request
        # with the same id before the first is answered is refused.
        self._in_flight: Set[int] = set()
        # Host streams whose tunnel request is being served: made when the
        # request is read, so that the data, eof or reset the host sends
        # after it (without waiting for the answer) has a stream to go to.
        self._pending_tunnels: Dict[int, tunnel.Stream] = {}
        # +1 at each hello: a reply to a request of an earlier host session
        # is dropped, not delivered to a new request that reuses its id.
        self.generation = 0
        self.bad_frames = 0
        self.subscribed = False
        self.closed = False

    def send(self, obj: Dict[str, Any]) -> None:
        self.send_raw(protocol.encode_json(obj))

    def send_data(self, stream_id: int, data: bytes) -> None:
        self.send_raw(protocol.encode_data(stream_id, data))

    def send_raw(self, frame: bytes, generation: Optional[int] = None) -> None:
        with self._write_lock:
            if self.closed:
                raise OSError("session closed")
            if generation is not None and generation != self.generation:
                return  # for a host session that has ended
            self.channel.write(frame)

    def send_error(self, req_id: Optional[int], error: str, closed: bool = False) -> None:
        """An error reply (to `req_id`, or to no request); never raises."""
        reply: Dict[str, Any] = {"ok": False, "error": error}
        if req_id is not None:
            reply["id"] = req_id
        if closed:
            reply["closed"] = True  # the host knows its session is over
        try:
            self.send(reply)
        except (OSError, protocol.ProtocolError) as e:
            log("%s: cannot send an error reply: %s" % (self.channel.name, e))

    def complain(self, problem: str) -> None:
        self.bad_frames += 1
        n = self.bad_frames
        if n <= self.LOG_FIRST or n % self.LOG_EVERY == 0:
            log("%s: %s (%d bad frames in this session)" % (self.channel.name, problem, n))

    def feed(self, data: bytes) -> bool:
        """Handle incoming bytes; False when the connection must close."""
        try:
            messages = self.decoder.feed(data)
        except protocol.ProtocolError:
            return False  # fed after it failed
        for msg in messages:
            try:
                self.handle(msg)
            except Exception as e:  # a bug must not take the session down
                self.complain("handling a frame failed: %r" % (e,))
                req_id = msg.obj.get("id") if isinstance(msg, protocol.JsonMessage) else None
                self.send_error(req_id if protocol.valid_id(req_id) else None,
                                "internal error: %s" % short(e))
        broken = self.decoder.error
        if broken is not None:  # the frames before it were served; this session ends
            log("%s: %s; closing the session" % (self.channel.name, broken))
            self.send_error(None, "protocol error: %s; session closed" % broken, closed=True)
            return False
        return True

    def handle(self, msg: protocol.Message) -> None:
        if isinstance(msg, protocol.JsonMessage):
            self.agent.dispatch(self, msg.obj)
        elif isinstance(msg, protocol.StreamData):
            stream = self.streams.get(msg.stream_id)
            if stream is not None and msg.data:
                self.agent.ports.poke()  # a forwarded connection's bytes
                stream.deliver(msg.data)
        else:
            self.complain(msg.reason)
            self.send_error(msg.req_id, msg.reason)

    def serve(self) -> None:
        try:
            while True:
                data = self.channel.read()
                if not data or not self.feed(data):
                    return
        except Exception as e:  # OSError, or a bug: the session ends, the agent goes on
            log("%s: %r" % (self.channel.name, e))
        finally:
            self.close()
            self.channel.close()

    def in_flight(self, req_id: Optional[int]) -> bool:
        with self._streams_lock:
            return req_id in self._in_flight

    def begin(self, req_id: Optional[int]) -> bool:
        """Register a request served on its own thread; False if its id is in flight."""
        if req_id is None:
            return True
        with self._streams_lock:
            if req_id in self._in_flight:
                return False
            self._in_flight.add(req_id)
            return True

    def finish(self, req_id: Optional[int]) -> None:
        with self._streams_lock:
            self._in_flight.discard(req_id)

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
            while stream_id in self.streams:
                stream_id += 2
            self._next_stream = stream_id + 2
            if self._next_stream > protocol.MAX_STREAM_ID:
                self._next_stream = 1
        stream = self.add_stream(stream_id, sock)
        try:
            self.send({"event": "accept", "stream": stream_id, **event})
        except OSError:
            stream.reset()
            raise
        stream.start()
        return stream

    def add_pending_tunnel(self, stream_id: int, datagram: bool) -> None:
        """A tunnel request was read: its stream takes frames from now on,
        holding them until the connect in the guest is made."""
        with self._streams_lock:
            if stream_id in self.streams:
                return  # a duplicate: open_tunnel refuses it
            stream = tunnel.Stream(stream_id, None, datagram, self.send, self.send_data,
                                   self.stream_done)
            self.streams[stream_id] = stream
            self._pending_tunnels[stream_id] = stream

    def take_pending_tunnel(self, stream_id: int) -> Optional[tunnel.Stream]:
        with self._streams_lock:
            return self._pending_tunnels.pop(stream_id, None)

    def stream_done(self, stream_id: int) -> None:
        with self._streams_lock:
            self.streams.pop(stream_id, None)

    def reserve_stream(self, stream_id: int) -> None:
        """A files request naming a new host stream was read: its id is held
        (as a tunnel's is) so that a reset sent before it is made counts."""
        with self._streams_lock:
            if stream_id not in self.streams:
                self.streams[stream_id] = ReservedStream(stream_id)

    def claim_reserved(self, stream_id: int, end: StreamEnd) -> bool:
        """The reserved id becomes `end`; False if it was reset meanwhile, or
        is no reservation (a duplicate id)."""
        with self._streams_lock:
            held = self.streams.get(stream_id)
            if not isinstance(held, ReservedStream) or held.was_reset:
                return False
            self.streams[stream_id] = end
        return True

    def drop_reserved(self, stream_id: Any) -> None:
        with self._streams_lock:
            if isinstance(self.streams.get(stream_id), ReservedStream):
                del self.streams[stream_id]

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
        with self._write_lock:
            self.generation += 1
        with self._streams_lock:
            self._in_flight.clear()
            self._pending_tunnels.clear()
            streams = list(self.streams.values())
            listeners = list(self.listeners.items())
            self.listeners.clear()
        for stream in streams:
            stream.reset()
        for path, sock in listeners:
            close_listener(sock, path)

    def listen_unix(self, path: str, generation: int) -> None:
        """Reverse forwarding: each connection to `path` becomes a stream to the host."""
        self._drop_listener(path)
        self._listen(path, unix_listener(path, mode=0o666), {"path": path}, generation)

    def listen_tcp(self, port: int, generation: int) -> None:
        """Each connection to 127.0.0.1:`port` becomes a stream to the host
        (the egress proxy: the host reads the request and decides)."""
        key = "tcp:%d" % port
        self._drop_listener(key)  # first: the new one binds the same port
        self._listen(key, tcp_loopback_listener(port), {"tcp": port}, generation)

    def _drop_listener(self, key: str) -> None:
        with self._streams_lock:
            old = self.listeners.pop(key, None)
        if old is not None:
            close_listener(old, key)

    def _listen(self, key: str, sock: socket.socket, event: Dict[str, Any],
                generation: int) -> None:
        """Serve `sock` for the session that asked (`generation`); closed at
        once if that session has ended meanwhile (its reset came first)."""
        with self._streams_lock:
            current = generation == self.generation
            if current:
                old = self.listeners.pop(key, None)
                self.listeners[key] = sock
        if not current:
            close_listener(sock, key)
            raise OSError(errno.ECONNRESET, "the session ended")
        if old is not None:
            close_listener(old, key)
        threading.Thread(target=self._accept_loop, args=(sock, key, event), daemon=True).start()

    def _accept_loop(self, sock: socket.socket, key: str, event: Dict[str, Any]) -> None:
        while True:
            try:
                client, _ = sock.accept()
            except OSError:
                return  # closed with the session
            try:
                self.offer_stream(client, event)
            except OSError:
                return  # the host left
            except Exception as e:  # a bug: this connection is lost, the listener goes on
                log("%s: offering a stream failed: %r" % (key, e))
                with contextlib.suppress(OSError):
                    client.close()


class Agent:
    def __init__(self, opts: Optional[Options] = None) -> None:
        self.opts = opts or Options()
        self.worker = worker.WorkerStatus(self.opts.busy_threshold, self.opts.sample_secs,
                                          self.worker_changed)
        self.health = health.HealthMonitor(self.broadcast, self.opts.integrations_dir,
                                           self.opts.probes_dir)
        self.handlers: Dict[str, Handler] = {
            "ping": lambda conn, req: {"pong": True},
            "boot-done": lambda conn, req: {"marker": self.boot_done_marker()},
            "info": self.info,
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
            "exec": self.start_exec,
            "tunnel": self.open_tunnel,
            "files-stat": self.files_request,
            "files-list": self.files_request,
            "files-mkdir": self.files_request,
            "files-remove": self.files_request,
            "files-rename": self.files_request,
            "files-read": self.files_stream,
            "files-write": self.files_stream,
            "files-watch": self.files_stream,
            "reidentify": self.reidentify,
            "dns-port": self.move_dns,
        }
        self.dns_relay: Optional[dnsrelay.Relay] = None  # hostResolver's, when it runs
        self._sshfs: Dict[str, Any] = {}  # mount point -> sshfs process
        self.ports = PortWatcher(self.ports_changed)
        self._subscribers: List[Connection] = []
        self._sub_lock = threading.Lock()
        self.epoch = new_epoch()  # this process's; the virtio-serial port has its own

    def boot_done_marker(self) -> str:
        """The boot-done marker's line; "" while the boot scripts still run."""
        try:
            with open(protocol.BOOT_DONE_MARKER) as f:
                return f.read(4096).strip()
        except OSError:
            return ""

    def info(self, conn: Connection, req: Dict[str, Any]) -> Dict[str, Any]:
        return {
            "version": __version__,
            "python": "%d.%d.%d" % sys.version_info[:3],
            "kernel": os.uname().release,
            "hostname": socket.gethostname(),
            "uptime": _uptime(),
            "agentUptime": round(time.monotonic() - _STARTED, 3),
            "pid": os.getpid(),
            "epoch": self.epoch,
            "portScanner": self.ports.scanner_kind,
            "portWatch": self.ports.state(),
            **send_parts(conn, req, "ports", ports.as_dicts(self.ports.current())),
        }

    # -- events -----------------------------------------------------------

    def subscribe(self, conn: Connection, req: Dict[str, Any]) -> Dict[str, Any]:
        with self._sub_lock:
            if conn not in self._subscribers:
                self._subscribers.append(conn)
        self.ports.start()
        self.worker.start()
        return {"worker": self.worker.snapshot(),
                **send_parts(conn, req, "ports", ports.as_dicts(self.ports.current()))}

    def listen(self, conn: Connection, req: Dict[str, Any]) -> Dict[str, Any]:
        """A socket in the guest whose connections the host takes: {"path"}
        (a Unix socket, reverse forwards) or {"tcp": port} (on loopback)."""
        generation = conn.generation  # the session asking, read before any reset
        port = req.get("tcp")
        if "tcp" in req:
            if not protocol.is_int(port) or not 0 < port < 65536:
                raise RequestError("listen: tcp needs a port number (1-65535)")
            try:
                conn.listen_tcp(port, generation)
            except OSError as e:
                raise RequestError("cannot listen on 127.0.0.1:%d: %s"
                                   % (port, e.strerror or e)) from None
            return {"tcp": port}
        path = req.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            raise RequestError("listen needs an absolute socket path")
        try:
            conn.listen_unix(path, generation)
        except OSError as e:
            raise RequestError("cannot listen on %s: %s" % (path, e.strerror or e)) from None
        return {"path": path}

    def mount(self, conn: Connection, req: Dict[str, Any]) -> Dict[str, Any]:
        from roost_guest import mounts
        try:
            if req.get("keepExisting") is True:
                kept = mounts.keep_existing(req)
                if kept is not None:
                    return kept
            if req.get("fstype") == "reverse-sshfs":
                return self._mount_sshfs(conn, req)
            return mounts.mount_device(req)
        except mounts.MountError as e:
            raise RequestError(str(e)) from None

    def _mount_sshfs(self, conn: Connection, req: Dict[str, Any]) -> Dict[str, Any]:
        """sshfs speaks SFTP over a stream that the host joins to sftp-server."""
        from roost_guest import mounts
        path = mounts.check_mount_point(req.get("mountPoint"))
        ours, theirs = socket.socketpair()
        # The host serves what it granted this token for, whatever we claim.
        stream = conn.offer_stream(ours, {"path": "sftp", "token": str(req.get("token"))})
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
        from roost_guest import mounts
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

    def reidentify(self, conn: Connection, req: Dict[str, Any]) -> Dict[str, Any]:
        """A fork, woken: its own host name, SSH host key and MAC (roost_guest.identity)."""
        from roost_guest import identity
        try:
            return identity.reidentify(req)
        except identity.IdentityError as e:
            raise RequestError(str(e)) from None

    def move_dns(self, conn: Connection, req: Dict[str, Any]) -> Dict[str, Any]:
        """hostResolver moved to another port on the host (a restored guest,
        a fork above all, whose source holds the one it was saved with)."""
        port = req.get("port")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise RequestError("dns-port needs port: 1-65535")
        if self.dns_relay is not None:
            self.dns_relay.move(port)
            return {"dns": "relay %s:%d" % self.dns_relay.upstream}
        from roost_guest import identity
        try:
            return {"dns": identity.redirect_dns(port)}
        except identity.IdentityError as e:
            raise RequestError(str(e)) from None

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
        from roost_guest import diff
        try:
            changes = diff.diff()
        except diff.DiffError as e:
            raise RequestError(str(e)) from None
        return {"count": len(changes), **send_parts(conn, req, "changes", changes)}

    def worker_status(self) -> Dict[str, Any]:
        self.worker.start()
        return self.worker.snapshot()

    def worker_changed(self, status: Dict[str, Any]) -> None:
        self.broadcast({"event": "worker", **status})

    def start_exec(self, conn: Connection, req: Dict[str, Any]) -> Dict[str, Any]:
        """Spawn the command and answer {"pid"}, or {"error", "exitCode"} when it
        cannot run; only after the answer does it start to flow (roost_guest.execute)."""
        from roost_guest import execute
        try:
            run = self._spawn(conn, req)
        except execute.ExecError as e:  # served: the command could not run
            return {"error": str(e), "exitCode": e.exit_code}
        conn.finish(req.get("id"))
        try:
            # Answered here, before the command's first output can go out.
            conn.send({"id": req.get("id"), "ok": True, "result": {"pid": run.pid}})
        except OSError:
            run.hangup()  # the host is gone: the run's loop kills the command
        run.start()
        return ANSWERED

    # -- files (roost_guest.files) ---------------------------------------------

    def _files(self) -> Any:
        if not self.opts.allow_files:
            raise RequestError("file access is disabled in this guest "
                               "(guestAgent.allowFiles: false)")
        from roost_guest import files
        return files

    def files_request(self, conn: Connection, req: Dict[str, Any]) -> Dict[str, Any]:
        """stat, list, mkdir, remove, rename: answered in one reply (a long
        listing as parts)."""
        files = self._files()
        kind = req["type"]
        try:
            if kind == "files-list":
                return send_parts(conn, req, "entries", files.list_dir(req))
            serve = {"files-stat": files.stat_path, "files-mkdir": files.make_dir,
                     "files-remove": files.remove, "files-rename": files.rename}[kind]
            result: Dict[str, Any] = serve(req)
            return result
        except files.FilesError as e:
            raise RequestError(str(e)) from None

    def files_stream(self, conn: Connection, req: Dict[str, Any]) -> Dict[str, Any]:
        """read, write and watch: the reply, then the stream's data or events.
        The stream id was reserved when the request was read (dispatch): a
        reset the host sends meanwhile (it gave up waiting) ends it here."""
        stream_id = req.get("stream")
        try:
            return self._files_stream(conn, req, stream_id)
        finally:
            conn.drop_reserved(stream_id)  # unless it became the stream

    def _files_stream(self, conn: Connection, req: Dict[str, Any],
                      stream_id: Any) -> Dict[str, Any]:
        files = self._files()
        if not protocol.valid_stream_id(stream_id, parity=0):
            raise RequestError(BAD_STREAM % short(stream_id))
        kind = req["type"]
        fd = -1
        target = None
        try:
            if kind == "files-watch":
                end: Any = files.Watch(req, stream_id, conn.send, conn.stream_done)
                result: Dict[str, Any] = {"path": end.path}
            elif kind == "files-read":
                fd, result = files.open_read(req)
                end = files.FileStream(stream_id, conn.send, conn.send_data, conn.stream_done)
            else:
                target = files.Write(req)
                end = files.FileStream(stream_id, conn.send, conn.send_data, conn.stream_done)
                result = {"path": target.path, "mode": target.mode}
        except files.FilesError as e:
            raise RequestError(str(e)) from None

        def undo() -> None:
            if fd >= 0:
                os.close(fd)
            if target is not None:
                target.abandon()

        if not conn.claim_reserved(stream_id, end):
            undo()
            raise RequestError("%s, or reset by the host while it opened"
                               % (BAD_STREAM % short(stream_id)))
        conn.finish(req.get("id"))
        try:
            # Answered before the stream's first data or event can go out.
            conn.send({"id": req.get("id"), "ok": True, "result": result})
        except OSError:
            end.reset()
            conn.stream_done(stream_id)
            undo()
            return ANSWERED
        if kind == "files-watch":
            end.start()
        elif kind == "files-read":
            end.send_file(fd)
        else:
            end.receive_file(target)
        return ANSWERED

    def exec_control(self, conn: Connection, req: Dict[str, Any]) -> None:
        """exec-signal, exec-kill, exec-resize: to the command of a host stream."""
        from roost_guest import execute
        kind = req["type"]
        stream_id = req.get("stream")
        if not protocol.valid_stream_id(stream_id, parity=0):
            conn.send_error(None, "%s needs a host stream id (even, in 1..2**32-1), got %s"
                            % (kind, short(stream_id)))
            return
        port = conn.streams.get(stream_id)
        if isinstance(port, execute.Port):
            port.control(req)
        elif port is not None:
            conn.send_error(None, "%s for stream %d, which is no command's" % (kind, stream_id))
        # else the command has ended: the host learns of it from its exit event

    def _spawn(self, conn: Connection, req: Dict[str, Any]) -> execute.Exec:
        from roost_guest import execute
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
        """Send `event` to every subscriber; never raises (watcher threads call it)."""
        try:
            frame = protocol.encode_json(event)
        except protocol.ProtocolError as e:
            log("event %s not sent: %s" % (short(event.get("event")), e))
            return
        with self._sub_lock:
            subscribers = list(self._subscribers)
        for conn in subscribers:
            try:
                conn.send_raw(frame)
            except OSError:
                self.unsubscribe(conn)

    def unsubscribe(self, conn: Connection) -> None:
        with self._sub_lock:
            if conn in self._subscribers:
                self._subscribers.remove(conn)

    def ports_changed(self, added: List[Any], removed: List[Any]) -> None:
        # In parts that each fit a frame, however many sockets the guest opens.
        for i in range(0, max(len(added), len(removed)), PART_ITEMS):
            self.broadcast({"event": "ports", "added": ports.as_dicts(added[i : i + PART_ITEMS]),
                            "removed": ports.as_dicts(removed[i : i + PART_ITEMS])})

    # -- requests ---------------------------------------------------------

    # Served on a thread of their own: they may take a while, and the
    # channel's other requests and streams must not wait for them.
    THREADED = ("tunnel", "mount", "umount", "exec", "diff", "sleep-prep", "wake",
                "files-stat", "files-list", "files-mkdir", "files-remove", "files-rename",
                "files-read", "files-write", "files-watch", "reidentify", "dns-port")

    # What the host asks of an idle guest too (heartbeats, status and health
    # polls): everything else may start a listener, so the port watcher wakes.
    UNEVENTFUL = ("ping", "info", "status", "health", "probes", "events", "boot-done")

    def dispatch(self, conn: Connection, req: Dict[str, Any]) -> None:
        """One JSON message from the host; every problem gets an error reply."""
        kind = req.get("type")
        if kind not in self.UNEVENTFUL:
            self.ports.poke()
        if kind in protocol.STREAM_CONTROL:
            self.stream_control(conn, req)
            return
        if kind in protocol.EXEC_CONTROL:
            self.exec_control(conn, req)
            return
        req_id = req.get("id")
        if req_id is not None and not protocol.valid_id(req_id):
            conn.send_error(None, "request id must be an integer in 0..2**53, got %s"
                            % short(req_id))
            return
        if not isinstance(kind, str):
            conn.send_error(req_id, "request type must be a string, got %s" % short(kind))
            return
        if kind == "hello":
            self.hello(conn, req)
            return
        handler = self.handlers.get(kind)
        if handler is None:
            conn.send_error(req_id, "unknown request type %s" % short(kind))
            return
        if kind not in self.THREADED:
            if conn.in_flight(req_id):
                conn.send_error(req_id, "request id %s is already in flight" % req_id)
            else:
                self.reply(conn, req, handler, conn.generation)
            return
        if not conn.begin(req_id):
            conn.send_error(req_id, "request id %s is already in flight" % req_id)
            return
        if kind == "tunnel" and protocol.valid_stream_id(req.get("stream"), parity=0):
            # Before the frames that follow it are read (see add_pending_tunnel).
            conn.add_pending_tunnel(req["stream"], req.get("proto") == "udp")
        elif kind in FILE_STREAMS and protocol.valid_stream_id(req.get("stream"), parity=0):
            conn.reserve_stream(req["stream"])
        threading.Thread(target=self.reply, args=(conn, req, handler, conn.generation),
                         daemon=True).start()

    def hello(self, conn: Connection, req: Dict[str, Any]) -> None:
        """A new host session; on virtio-serial the old one may not have ended
        with an EOF we saw."""
        nonce = req.get("nonce")
        if not protocol.valid_id(nonce):
            conn.send_error(None, "hello needs a nonce, an integer in 0..2**53, got %s"
                            % short(nonce))
            return
        conn.reset_session()
        conn.send_raw(protocol.sync_frame(nonce, conn.epoch))

    def reply(self, conn: Connection, req: Dict[str, Any], handler: Handler,
              generation: int) -> None:
        """Serve one request and send its answer. Its id leaves the in-flight
        set before the answer goes: the host may reuse it as soon as it has one."""
        req_id = req.get("id")
        error = ""
        try:
            result = handler(conn, req)
        except RequestError as e:
            error = str(e)
        except Exception as e:  # a bug must not take the agent down
            log("request %s failed: %r" % (short(req.get("type")), e))
            error = "internal error: %s" % short(e)
        else:
            if result is ANSWERED:
                return
            try:
                frame = protocol.encode_json({"id": req_id, "ok": True, "result": result})
            except protocol.ProtocolError as e:
                error = "reply not sendable: %s" % e
        conn.finish(req_id)
        if error:
            frame = protocol.encode_json({"id": req_id, "ok": False, "error": error})
        try:
            conn.send_raw(frame, generation)
        except OSError as e:
            log("reply failed: %s" % e)

    def open_tunnel(self, conn: Connection, req: Dict[str, Any]) -> Dict[str, Any]:
        """Connect to what the request names and join it to the stream made
        when the request was read (what the host sent it meanwhile is queued)."""
        stream_id = req.get("stream")
        stream = conn.take_pending_tunnel(stream_id) \
            if protocol.valid_stream_id(stream_id, parity=0) else None
        if stream is None:
            raise RequestError(BAD_STREAM % short(stream_id))
        try:
            sock = tunnel.open_local(req)
        except tunnel.TunnelError as e:
            stream.reset()
            raise RequestError(str(e)) from None
        if not stream.attach(sock):  # the host gave up on it meanwhile
            sock.close()
            raise RequestError("stream %s was reset by the host while it opened" % stream_id)
        conn.finish(req.get("id"))
        try:
            # Answered here, before the stream's first data frame can go out.
            conn.send({"id": req.get("id"), "ok": True, "result": {"stream": stream_id}})
        except OSError:
            stream.reset()
            return ANSWERED
        stream.start()
        return ANSWERED

    def stream_control(self, conn: Connection, req: Dict[str, Any]) -> None:
        kind = req["type"]
        stream_id = req.get("stream")
        if not protocol.valid_stream_id(stream_id):
            conn.send_error(None, "%s needs a stream id in 1..2**32-1, got %s"
                            % (kind, short(stream_id)))
            return
        stream = conn.streams.get(stream_id)
        if stream is None:
            return  # already gone; the peer learns from our own reset or eof
        if kind == "window":
            n = req.get("bytes")
            if not protocol.is_int(n) or not 0 <= n <= protocol.WINDOW:
                conn.send_error(None, "window needs bytes in 0..%d, got %s"
                                % (protocol.WINDOW, short(n)))
                return
            stream.grant(n)
        elif kind == "eof":
            stream.eof()
        else:
            stream.reset()


def send_parts(conn: Connection, req: Dict[str, Any], key: str,
               items: List[Any]) -> Dict[str, Any]:
    """A list of any length as `part` events that each fit a frame (a guest
    may listen on ten thousand ports), before the reply, which names the key
    the host puts them under."""
    part: List[Any] = []
    size = 0
    for item in items:
        # As encode_json writes it; ensure_ascii: a non-ASCII character is six bytes.
        n = len(compactjson.dumps(item)) + 1
        if part and (len(part) >= PART_ITEMS or size + n > PART_BYTES):
            conn.send({"event": "part", "id": req.get("id"), "key": key, "items": part})
            part, size = [], 0
        part.append(item)
        size += n
    if part:
        conn.send({"event": "part", "id": req.get("id"), "key": key, "items": part})
    return {"parts": key}


class PortWatcher:
    """Rescans listening sockets and reports changes, while anyone listens:
    every INTERVAL while the guest is active, and in a quiet guest once every
    QUIET_INTERVAL or as soon as a process forks, execs or exits or the host
    asks something of the agent (see procevents.py: polling at 10 Hz was
    about 5 % of a host core per idle VM under TCG)."""

    INTERVAL = 0.1  # a new listener reaches the host well within 250 ms
    QUIET_INTERVAL = 1.0  # what a listener of a process that stayed quiet waits at most
    ACTIVE_FOR = 5.0  # seconds of rescans every INTERVAL after a sign of activity

    def __init__(self, on_change: Callable[[List[Any], List[Any]], None]) -> None:
        self.on_change = on_change
        self._lock = threading.Lock()
        self._started = False
        self._stopped = False
        self._scanner = ports.make_scanner()
        self.scanner_kind = type(self._scanner).__name__
        self._current = self._scanner.scan()
        self._active_until = 0.0  # CLOCK_MONOTONIC
        self._events: Any = None  # procevents.ProcEvents, once the loop runs
        self._activity = procevents.Activity()
        self.wakeup = "polling"  # or "proc-events": how a quiet guest's watcher wakes

    def poke(self) -> None:
        """The host asked something of the guest: rescan often for a while.
        Called for every frame of a forwarded connection: while active it
        only moves a deadline; from quiet it also ends the wait (a wake-up
        that comes just before the wait ends the wait)."""
        now = time.monotonic()
        was_quiet = now >= self._active_until
        self._active_until = now + self.ACTIVE_FOR
        events = self._events
        if was_quiet and events is not None:
            events.wake()

    def state(self) -> Dict[str, Any]:
        """For `info` (beside portScanner): whether it watches, how it wakes,
        whether it is active."""
        return {"wakeup": self.wakeup, "watching": self._started,
                "active": self._started and (self._events is None
                                             or time.monotonic() < self._active_until)}

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

    def stop(self) -> None:
        """Ends the loop after its current pause (for tests: the agent's runs
        as long as the agent)."""
        self._stopped = True
        events = self._events
        if events is not None:
            events.wake()

    def _stay_active(self) -> None:
        self._active_until = time.monotonic() + self.ACTIVE_FOR

    def _pause(self) -> None:
        """Until the next rescan is due."""
        if self._activity.seen():
            self._stay_active()
        if self._events is None or time.monotonic() < self._active_until:
            time.sleep(self.INTERVAL)
            return
        try:
            if self._events.wait(self.QUIET_INTERVAL):
                self._stay_active()
        except Exception as e:  # OSError, or a bug: poll from now on
            log("process events failed (%r); polling every %gs" % (e, self.INTERVAL))
            events, self._events, self.wakeup = self._events, None, "polling"
            events.close()

    def _loop(self) -> None:
        self._events = procevents.ProcEvents.open()
        if self._events is not None:
            self.wakeup = "proc-events"
        self._stay_active()
        while not self._stopped:
            self._pause()
            if self._stopped:
                break
            try:
                now = self._scanner.scan()
            except OSError as e:
                log("port scan failed (%s); using /proc/net" % e)
                self._scanner = ports.ProcScanner()
                self.scanner_kind = "ProcScanner"
                continue
            except Exception as e:  # a bug: this scan is lost, the watcher goes on
                log("port scan failed: %r" % (e,))
                time.sleep(1)
                continue
            with self._lock:
                before, self._current = self._current, now
            if now != before:
                self._stay_active()
                self.on_change(sorted(now - before), sorted(before - now))
        if self._events is not None:
            self._events.close()


def _uptime() -> float:
    try:
        with open("/proc/uptime") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0


HELLO_MARK = protocol.KIND_JSON + b'{"type":"hello"'
HELLO_MAX = 256  # a hello frame is a few dozen bytes


class PortSessions:
    """The host sessions on the virtio-serial port, one after another.

    The port has no connections, only bytes: a host session is what
    follows a hello frame, until EOF (the host left: read() gives EOF while
    no host is connected to the port's backend), a frame that breaks the
    framing, or the next hello. Outside a session, input is dropped up to
    the next hello: at start (what the port holds was meant for an agent
    process before this one), after EOF and after a broken frame.
    """

    def __init__(self, agent: Agent, channel: Channel) -> None:
        self.agent = agent
        self.channel = channel
        # Announced at start: a host whose session has another epoch knows
        # the guest side of it is gone (the agent restarted) and says hello.
        self.epoch = new_epoch()
        self.conn: Optional[Connection] = None
        self._tail = b""  # a hello and its header may straddle two reads

    def announce(self) -> None:
        """Blocks until a host is connected (the port holds writes until then)."""
        self.channel.write(protocol.encode_json({"event": "started", "epoch": self.epoch}))

    def data(self, data: bytes) -> None:
        try:
            while data:
                if self.conn is None:
                    data = self._from_hello(data)
                    if not data:
                        return
                    self.conn = Connection(self.agent, self.channel, self.epoch)
                if self.conn.feed(data):
                    return
                # A broken frame: a hello after it may start the next session.
                data = self.conn.decoder.unconsumed
                self.end()
        except Exception as e:  # a bug: this session ends, the port is served on
            log("%s: %r; dropping the session" % (self.channel.name, e))
            self.end()

    def end(self) -> None:
        if self.conn is not None:
            self.conn.close()  # the host left: its streams end with it
        self.conn = None
        self._tail = b""

    def _from_hello(self, data: bytes) -> bytes:
        """`data` from the first hello frame on; b"" (keeping a tail) if none."""
        buf = self._tail + data
        pos = protocol.HEADER_SIZE
        while True:
            at = buf.find(HELLO_MARK, pos)
            if at < 0:
                self._tail = buf[-(len(HELLO_MARK) + protocol.HEADER_SIZE - 1) :]
                return b""
            length = int.from_bytes(buf[at - protocol.HEADER_SIZE : at], "big")
            if len(HELLO_MARK) < length <= HELLO_MAX:
                self._tail = b""
                return buf[at - protocol.HEADER_SIZE :]
            pos = at + 1


class PortChannel(Channel):
    """The virtio-serial port's file descriptor. Writes are split: the port
    takes at most 32 KiB per write()."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name

    def read(self) -> bytes:
        return os.read(self.fd, 65536)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view[:32768])
            view = view[n:]

    def close(self) -> None:
        pass  # the port outlives its sessions


def serve_virtio_port(agent: Agent, path: str) -> None:
    """Serve the virtio-serial port for the agent's whole life: whatever
    goes wrong, the port is opened again and served on."""
    while not os.path.exists(path):
        time.sleep(0.05)
    while True:
        try:
            serve_port_once(agent, path)
        except Exception as e:
            log("%s: %r; opening the port again" % (path, e))
        time.sleep(0.5)


def serve_port_once(agent: Agent, path: str) -> None:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    channel = PortChannel(fd, path)
    sessions = PortSessions(agent, channel)
    try:
        sessions.announce()
        while True:
            data = channel.read()
            if not data:
                sessions.end()
                time.sleep(0.02)
                continue
            sessions.data(data)
    finally:
        sessions.end()
        os.close(fd)


def serve_listener(agent: Agent, sock: socket.socket, name: str,
                   admit: Optional[Callable[[Any], bool]] = None) -> None:
    """Serve each connection `admit` (given the peer's address) lets in."""
    while True:
        try:
            client, peer = sock.accept()
        except OSError as e:  # e.g. out of file descriptors: later may do
            if e.errno in (errno.EBADF, errno.EINVAL):  # the listener was closed
                return
            log("%s: accept failed: %s" % (name, e))
            time.sleep(0.1)
            continue
        if admit is not None and not admit(peer):
            client.close()
            continue
        try:
            conn = Connection(agent, SocketChannel(client, name), agent.epoch)
            threading.Thread(target=conn.serve, daemon=True).start()
        except Exception as e:  # e.g. no more threads: this client only
            log("%s: cannot serve a connection: %r" % (name, e))
            with contextlib.suppress(OSError):
                client.close()


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


def tcp_loopback_listener(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    return sock


def close_listener(sock: socket.socket, key: str) -> None:
    """`key`: the socket's path, or "tcp:PORT" (nothing to unlink)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
    if key.startswith("/"):
        with contextlib.suppress(OSError):
            os.unlink(key)


USAGE = """usage: roost-guestagent [--port DEVICE] [--unix PATH] [--vsock-port N]
  --port DEVICE    serve the virtio-serial port DEVICE
  --unix PATH      listen on a Unix socket at PATH
  --vsock-port N   listen on vsock port N, for the host (CID 2) only (0: off)
  --allow-exec     serve the dev-only exec request (audited)
  --allow-files    serve file requests: read, write, list, watch...
  --audit-log PATH where exec runs are logged (default /var/log/roost/exec.log)
  --integrations-dir DIR, --probes-dir DIR
                   health check and probe definitions (/etc/roost/*.d)
  --busy-threshold X, --sample-secs S
                   busy while more than X tasks are runnable, sampled every S
  --wait-for PATH  start serving once PATH exists (the agent was started
                   early in boot, before the file systems it serves on)
  --log PATH       append stderr to PATH (once PATH's directory exists)
  --lock-fd N      descriptor N holds the launcher's lock for the agent's
                   life: none of the commands it runs may inherit it
  --dns-relay HOST:PORT
                   relay DNS on 127.0.0.1:53 to HOST:PORT (hostResolver on
                   an image without netfilter)"""


class Options:
    def __init__(self) -> None:
        self.port = ""
        self.unix = ""
        self.vsock_port = 0
        self.allow_exec = False
        self.allow_files = False
        self.busy_threshold = 0.5
        self.sample_secs = 1.0
        self.audit_log = "/var/log/roost/exec.log"
        self.integrations_dir = health.INTEGRATIONS_DIR
        self.probes_dir = health.PROBES_DIR
        self.wait_for = ""
        self.log = ""
        self.dns_relay = ""
        self.lock_fd = -1


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
        if flag == "--allow-files":
            opts.allow_files = True
            continue
        name, eq, value = flag.partition("=")
        if name not in ("--port", "--unix", "--vsock-port", "--busy-threshold",
                        "--sample-secs", "--audit-log", "--integrations-dir",
                        "--probes-dir", "--wait-for", "--log", "--dns-relay", "--lock-fd"):
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
        elif name in ("--vsock-port", "--lock-fd"):
            if not value.isdigit():
                sys.exit("roost-guestagent: %s needs a number, got %r" % (name, value))
            if name == "--lock-fd":
                opts.lock_fd = int(value)
            else:
                opts.vsock_port = int(value)
        elif name == "--port":
            opts.port = value
        elif name == "--audit-log":
            opts.audit_log = value
        elif name == "--integrations-dir":
            opts.integrations_dir = value
        elif name == "--probes-dir":
            opts.probes_dir = value
        elif name == "--wait-for":
            opts.wait_for = value
        elif name == "--log":
            opts.log = value
        elif name == "--dns-relay":
            from roost_guest import dnsrelay

            try:
                dnsrelay.parse_upstream(value)
            except ValueError as e:
                sys.exit("roost-guestagent: %s" % e)
            opts.dns_relay = value
        else:
            opts.unix = value
    return opts


def mark_boot_timeline(what: str, at: Optional[float] = None,
                       path: str = "/run/roost/boot-timeline") -> None:
    """One line of the guest's boot timeline (seconds since kernel start, as
    /proc/uptime: CLOCK_MONOTONIC, which needs no /proc), if boot made one:
    `roost info` shows it, bench/boot.py reports it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)  # never creates it
    except OSError:
        return
    try:
        line = "%.2f %s\n" % (time.monotonic() if at is None else at, what)
        os.write(fd, line.encode())
    except OSError:
        pass
    finally:
        os.close(fd)


WAIT_FOR_LIMIT = 60.0  # then serve anyway: a late start beats none


def wait_for_path(path: str, limit: float = WAIT_FOR_LIMIT) -> None:
    """Until `path` exists. Started early in boot, the agent has done its
    imports (most of its start-up under TCG) while the guest's init mounted
    /proc, /run and named the virtio ports; it serves once boot says so."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            log("%s did not appear within %gs; serving anyway" % (path, limit))
            return
        time.sleep(0.01)


def redirect_stderr(path: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
        log("cannot log to %s: %s" % (path, e))
        return
    os.dup2(fd, 2)
    os.close(fd)


def default_interrupt_signals() -> None:
    """SIGINT and SIGQUIT back to their defaults if the agent was started
    with them ignored (as a shell starts a command in the background, which
    is how the initramfs starts it): an ignored signal stays ignored across
    exec, so every command the agent runs would shrug off ^C. `_signal`, not
    `signal`: the latter's enums cost tens of milliseconds under TCG."""
    import _signal  # type: ignore[import-not-found]

    for signum in (_signal.SIGINT, _signal.SIGQUIT):
        if _signal.getsignal(signum) == _signal.SIG_IGN:
            _signal.signal(signum, _signal.SIG_DFL)


def main(argv: Optional[List[str]] = None) -> None:
    imported = time.monotonic()
    default_interrupt_signals()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.lock_fd >= 0:  # the subprocess module closes it anyway; any fork must too
        try:
            os.set_inheritable(args.lock_fd, False)
        except OSError as e:
            log("--lock-fd %d: %s" % (args.lock_fd, e))
    if args.wait_for:
        wait_for_path(args.wait_for)
        mark_boot_timeline("guest agent interpreter up", INTERPRETER_UP)
        mark_boot_timeline("guest agent imported", imported)
    if args.log:
        redirect_stderr(args.log)
    agent = Agent(args)
    threads = []

    def serve(target: Callable[..., None], *targs: Any) -> None:
        thread = threading.Thread(target=target, args=targs, daemon=True)
        thread.start()
        threads.append(thread)

    # The virtio-serial port first: the host waits for its first answer at
    # every boot, and what follows costs tenths of a second under TCG.
    if args.port:
        serve(serve_virtio_port, agent, args.port)
    mark_boot_timeline("guest agent serving")
    agent.health.start()  # rescans its directories; runs nothing until files appear
    threading.Thread(target=end_orphaned_commands, daemon=True).start()
    if args.dns_relay:
        from roost_guest import dnsrelay

        relay = dnsrelay.Relay(dnsrelay.parse_upstream(args.dns_relay), log)
        if relay.start():
            agent.dns_relay = relay
    if args.unix:
        serve(serve_listener, agent, unix_listener(args.unix), args.unix)
    if args.vsock_port:
        vsock_sock = vsock.listener(args.vsock_port, log)
        if vsock_sock is not None:
            serve(serve_listener, agent, vsock_sock, "vsock", vsock.HostOnly(log))
    if not threads:
        sys.exit("roost-guestagent: nothing to serve: give --port, --unix or --vsock-port")
    log("serving (%s)" % ", ".join(x for x in (args.port, args.unix) if x))
    while any(t.is_alive() for t in threads):
        time.sleep(3600)


if __name__ == "__main__":
    main()
