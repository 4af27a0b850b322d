"""Servers on 127.0.0.1 for the banner probe's tests: one that records every
connection (to prove bounds), a stand-in for slirp in front of a booting
guest, and a real OpenSSH sshd."""

from __future__ import annotations

import asyncio
import math
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"


class Conn:
    """One accepted connection, as the server saw it."""

    def __init__(self, index: int, sock: socket.socket) -> None:
        self.index = index
        self.sock = sock
        self.accepted = time.monotonic()
        self.answered_at: float | None = None  # when we sent a banner
        self.client_closed_at: float | None = None
        self.server_closed = False

    def client_open(self) -> bool:
        """Whether the client's end is open, by the kernel's word (so a close
        the client made before connecting again is always seen)."""
        if self.server_closed or self.client_closed_at is not None:
            return False
        try:
            return self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        except BlockingIOError:
            return True
        except OSError:
            return False

    async def client_closes(self, within: float) -> bool:
        """Wait up to `within` for the client to close; True if it did."""
        loop = asyncio.get_running_loop()
        try:
            data = await asyncio.wait_for(loop.sock_recv(self.sock, 1), within)
        except TimeoutError:
            return False
        except OSError:
            data = b""
        if data:
            raise AssertionError(f"the probe sent {data!r}; it should only listen")
        self.client_closed_at = time.monotonic()
        return True

    async def send_banner(self, name: str = "") -> None:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(self.sock, f"SSH-2.0-{name or f'conn{self.index}'}\r\n".encode())
        self.answered_at = time.monotonic()

    def close(self) -> None:
        if not self.server_closed:
            self.server_closed = True
            self.sock.close()


Behaviour = Callable[[Conn], Awaitable[None]]


class CountingServer:
    """Runs `behave` for each connection; `peak` is the most connections whose
    client end was open at once."""

    def __init__(self, behave: Behaviour, port: int = 0) -> None:
        self.behave = behave
        self.requested_port = port
        self.conns: list[Conn] = []
        self.peak = 0
        self.listening_at = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._lsock: socket.socket | None = None

    @property
    def port(self) -> int:
        assert self._lsock is not None
        return int(self._lsock.getsockname()[1])

    async def __aenter__(self) -> CountingServer:
        lsock = socket.socket()
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(("127.0.0.1", self.requested_port))
        lsock.listen(128)
        lsock.setblocking(False)
        self._lsock = lsock
        self.listening_at = time.monotonic()
        self._tasks.append(asyncio.ensure_future(self._accept(lsock)))
        return self

    async def _accept(self, lsock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(lsock)
            sock.setblocking(False)
            live = sum(c.client_open() for c in self.conns)
            self.peak = max(self.peak, live + 1)
            conn = Conn(len(self.conns), sock)
            self.conns.append(conn)
            self._tasks.append(asyncio.ensure_future(self._run(conn)))

    async def _run(self, conn: Conn) -> None:
        try:
            await self.behave(conn)
        except OSError:
            pass
        finally:
            conn.close()

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in self.conns:
            conn.close()
        assert self._lsock is not None
        self._lsock.close()


def answers_after(delay: float) -> Behaviour:
    """A slow sshd: silent for `delay`, then the banner (unless the client left)."""
    async def behave(conn: Conn) -> None:
        if not await conn.client_closes(within=delay):
            await conn.send_banner()
            await conn.client_closes(within=30)
    return behave


@dataclass
class SlirpModel:
    """QEMU user networking in front of a booting guest, time-scaled.

    As measured with libslirp 4.7: a connection made before the guest NIC
    is up is accepted and parked; its SYN is re-sent every `resend` seconds
    and reaches the guest at the first re-send once the NIC is up, whether
    or not the client is still there (slirp does not watch the host socket
    until the guest answers). The guest then resets it (nothing listening:
    the client sees EOF) or its sshd starts a session for it.
    """

    nic_up: float  # seconds after `origin`
    sshd_listens: float
    resend: float = 0.6
    banner_delay: float = 0.05  # OpenSSH under TCG: 0.3-0.6 s, scaled
    origin: float = field(default_factory=time.monotonic)
    sessions: list[tuple[float, float]] = field(default_factory=list)  # sshd start, end
    resets: int = 0

    def peak_sessions(self) -> int:
        edges = sorted([(s, 1) for s, _ in self.sessions] + [(e, -1) for _, e in self.sessions])
        peak = level = 0
        for _, step in edges:
            level += step
            peak = max(peak, level)
        return peak

    def delivery(self, accepted: float) -> float:
        nic = self.origin + self.nic_up
        if accepted >= nic:
            return accepted
        return accepted + math.ceil((nic - accepted) / self.resend) * self.resend

    async def behave(self, conn: Conn) -> None:
        await asyncio.sleep(max(0.0, self.delivery(conn.accepted) - time.monotonic()))
        if time.monotonic() < self.origin + self.sshd_listens:
            self.resets += 1
            return  # the guest's RST: slirp closes the host side
        # sshd starts up in full before it can tell the client has gone.
        start = time.monotonic()
        try:
            await asyncio.sleep(self.banner_delay)
            if conn.client_open():
                await conn.send_banner()
                await conn.client_closes(within=30)
        finally:
            self.sessions.append((start, time.monotonic()))


@dataclass
class RealSshd:
    port: int
    proc: asyncio.subprocess.Process
    log: list[str]
    listening_at: float
    _reader: asyncio.Task[None]

    def throttling(self) -> list[str]:
        return [line for line in self.log
                if "drop connection" in line or "MaxStartups" in line]

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()
        await self._reader


class SshdDir:
    """A config and host key for an unprivileged sshd on 127.0.0.1.

    sshd refuses to run as root without /run/sshd; as root the test runs it
    as nobody, so the directory must be readable by nobody."""

    def __init__(self, max_startups: str) -> None:
        if not os.path.exists(SSHD):
            raise AssertionError(f"{SSHD} is missing: install openssh-server "
                                 "(bash scripts/setup.sh --dev)")
        self.path = Path(tempfile.mkdtemp(prefix="roost-sshd-"))
        self.path.chmod(0o755)
        key = self.path / "host_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "nobody"
            nobody = pwd.getpwnam("nobody")
            os.chown(key, nobody.pw_uid, nobody.pw_gid)
        self.key = key
        self.max_startups = max_startups

    def config(self, port: int) -> Path:
        cfg = self.path / f"sshd_config.{port}"
        cfg.write_text(
            f"ListenAddress 127.0.0.1:{port}\n"
            f"HostKey {self.key}\n"
            "PidFile none\n"
            "UsePAM no\n"
            f"MaxStartups {self.max_startups}\n"
            "LogLevel VERBOSE\n"
        )
        cfg.chmod(0o644)
        return cfg

    async def start(self, port: int) -> RealSshd:
        """Start sshd -D -e on `port`; returns once it says it listens."""
        proc = await asyncio.create_subprocess_exec(
            SSHD, "-D", "-e", "-f", str(self.config(port)),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            user=self.user, group="nogroup" if self.user else None,
            extra_groups=[] if self.user else None,
        )
        log: list[str] = []
        listening = asyncio.get_running_loop().create_future()

        async def read() -> None:
            assert proc.stderr is not None
            async for raw in proc.stderr:
                line = raw.decode(errors="replace").rstrip()
                log.append(line)
                if "Server listening" in line and not listening.done():
                    listening.set_result(time.monotonic())
            if not listening.done():
                listening.set_exception(AssertionError(f"sshd exited: {log}"))

        reader = asyncio.ensure_future(read())
        listening_at = await asyncio.wait_for(listening, 10)
        return RealSshd(port, proc, log, listening_at, reader)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
